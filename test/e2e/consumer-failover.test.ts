// A node's consumer lives on one nats-server, in memory (see ShardConsumer): when that server stops, the node must
// notice, get a consumer on a server that is up, and go on applying, without waiting for the server to come back.

import assert from "node:assert/strict";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { after, describe, test } from "node:test";
import { TestCluster, waitFor } from "../helpers/marmot.js";
import { startNatsCluster, type TestNatsCluster } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA = "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT NOT NULL);";
const STREAM = "marmot-changes-1-1";
const CONSUMER = "marmot-node-2";

describe("the nats-server holding a node's consumer stops (external 3-server cluster, R3)", () => {
  let nats: TestNatsCluster | undefined;
  let cluster: TestCluster | undefined;
  after(async () => {
    await cluster?.stopAll();
    await nats?.stop();
  });

  test("node 2 goes on applying node 1's writes while that server is down; started again, all converge", async (t) => {
    nats = await startNatsCluster(3);
    cluster = await TestCluster.create({ schema: SCHEMA, size: 2, replicas: 3, natsUrls: nats.urls });
    await cluster.startAll();
    const [one, two] = [cluster.node(1), cluster.node(2)];
    const valueOn = (node: typeof one, id: number) => sqlite3(node.spec.dbPath, `SELECT v FROM items WHERE id = ${id}`).trim();

    sqlite3(one.spec.dbPath, "INSERT INTO items VALUES (1, 'before');");
    await waitFor(
      () => valueOn(two, 1) === "before",
      30_000,
      () => `node 2 to get row 1:\n${two.tail()}`,
    );

    const nc = await connect({ servers: nats.urls });
    let holder: string | undefined;
    try {
      holder = (await (await jetstreamManager(nc)).consumers.info(STREAM, CONSUMER)).cluster?.leader;
    } finally {
      await nc.close();
    }
    const index = nats.servers.findIndex((_, i) => holder === `test-n${i + 1}`);
    assert.ok(index >= 0, `node 2's consumer is on a server of the cluster (got ${holder})`);
    const server = nats.servers[index]!;
    const logBefore = two.output.length;
    await server.stop();
    const stoppedAt = Date.now();
    t.diagnostic(`stopped ${holder}, the server holding node 2's consumer`);

    sqlite3(one.spec.dbPath, "INSERT INTO items VALUES (2, 'while the server is down');");
    await waitFor(
      () => valueOn(two, 2) === "while the server is down",
      60_000,
      () => `node 2 to get row 2 with ${holder} down:\n${two.tail()}`,
    );
    t.diagnostic(`node 2 had row 2 ${Date.now() - stoppedAt} ms after the server stopped`);
    // The log is read from node 2's stderr pipe, which can trail the row the test just saw.
    await waitFor(
      () => /consuming stream/.test(two.output.slice(logBefore)),
      10_000,
      () => `node 2 to make its consumer again:\n${two.tail()}`,
    );

    await server.restart();
    sqlite3(two.spec.dbPath, "INSERT INTO items VALUES (3, 'after');");
    await cluster.waitConverged(["items"]);
    assert.equal(valueOn(one, 3), "after");
    assert.deepEqual(await Promise.all(cluster.nodes.map((n) => n.stop())), [0, 0]);
  });
});
