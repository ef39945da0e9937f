// publish = false, replicate = false and update_existing, on real marmot processes sharing one nats-server.

import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { after, describe, test } from "node:test";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { sleep, TestCluster, waitFor } from "../helpers/marmot.js";
import { startNatsServer } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA = "CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL);";
const count = (db: string, where: string) => Number(sqlite3(db, `SELECT count(*) FROM Books WHERE ${where};`));

describe("publish = false and replicate = false", () => {
  let cluster: TestCluster;
  after(async () => {
    await cluster?.stopAll();
  });

  test("a node that does not publish keeps its change log empty; a node that does not replicate applies nothing", async () => {
    const server = await startNatsServer();
    after(() => server.stop());
    // node 1: both; node 2: publish = false; node 3: replicate = false
    cluster = await TestCluster.create({
      size: 3,
      schema: SCHEMA,
      natsUrls: [server.url],
      nodeToml: (id) => (id === 2 ? "publish = false\ncleanup_interval = 200" : id === 3 ? "replicate = false" : ""),
    });
    await cluster.startAll();
    const [db1, db2, db3] = cluster.nodes.map((n) => n.spec.dbPath) as [string, string, string];

    sqlite3(db3, "INSERT INTO Books VALUES (3, 'from the node that does not replicate');");
    sqlite3(db1, "INSERT INTO Books VALUES (1, 'from the node that does both');");
    sqlite3(db2, "INSERT INTO Books VALUES (2, 'from the node that does not publish');");

    // node 3 publishes: its row reaches 1 and 2; node 1's row reaches 2 but not 3.
    await waitFor(
      () => count(db1, "id = 3") === 1 && count(db2, "id IN (1, 3)") === 2,
      30_000,
      () => "rows from nodes 1 and 3",
    );
    // node 2's change log is emptied without anything being sent.
    await waitFor(
      () => Number(sqlite3(db2, `SELECT count(*) FROM "__marmot__Books_change_log" WHERE __marmot_op <> 'marker';`)) === 0,
      30_000,
      () => "node 2's change log to be emptied",
    );
    await sleep(1500);
    assert.equal(count(db1, "id = 2"), 0, "node 2 published nothing");
    assert.equal(count(db3, "id = 2"), 0, "node 2 published nothing");
    assert.equal(count(db3, "id = 1"), 0, "node 3 applied nothing");
    assert.equal(count(db3, "id = 3"), 1, "node 3 keeps its own row");
  });
});

describe("update_existing", () => {
  test("a stream that differs from the config is left alone with a warning, and updated when update_existing = true", async () => {
    const server = await startNatsServer();
    after(() => server.stop());
    const cluster = await TestCluster.create({ size: 1, schema: SCHEMA, natsUrls: [server.url], maxEntries: 500 });
    after(() => cluster.stopAll());
    const node = cluster.node(1);
    const maxMsgs = async () => {
      const nc = await connect({ servers: server.url });
      try {
        return (await (await jetstreamManager(nc)).streams.info("marmot-changes-1-1")).config.max_msgs;
      } finally {
        await nc.close();
      }
    };

    await cluster.startAll();
    assert.equal(await maxMsgs(), 500);
    await node.stop();

    const config = readFileSync(node.spec.configPath, "utf8").replace("max_entries = 500", "max_entries = 900");
    writeFileSync(node.spec.configPath, config);
    node.start();
    await node.waitRunning();
    assert.match(node.output, /stream differs from the config.*update_existing/);
    assert.equal(await maxMsgs(), 500, "left alone without update_existing");
    await node.stop();

    writeFileSync(node.spec.configPath, config.replace("max_entries = 900", "max_entries = 900\nupdate_existing = true"));
    node.start();
    await node.waitRunning();
    assert.match(node.output, /updated stream to match the config/);
    assert.equal(await maxMsgs(), 900);
  });
});
