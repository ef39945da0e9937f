// /status and /readyz through the states a node passes, with an external nats-server the test starts and kills:
// starting (no NATS yet), caught up, NATS gone and back, stopped (as another node sees it).

import assert from "node:assert/strict";
import { test } from "node:test";
import { TestCluster, waitFor } from "../helpers/marmot.js";
import { startNatsServer, type TestNatsServer } from "../helpers/nats.js";
import { freePort, freePorts } from "../helpers/ports.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";
import { fetchReadyz, fetchStatus, statusToml, type ReadyzAnswer } from "../helpers/status.js";

useProcessCleanup();

test("/readyz and /status follow a node from starting to ready, through NATS going away and coming back, to stopped", async (t) => {
  const natsPort = await freePort();
  const httpPorts = await freePorts(2);
  const cluster = await TestCluster.create({
    size: 2,
    schema: "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL);",
    natsUrls: [`nats://127.0.0.1:${natsPort}`],
    nodeToml: (id) => statusToml(httpPorts[id - 1]!),
  });
  let nats: TestNatsServer | undefined;
  t.after(async () => {
    await cluster.stopAll();
    await nats?.stop();
  });
  const [port1, port2] = httpPorts as [number, number];
  let answer: ReadyzAnswer | undefined;
  const readyzOf = async (port: number) => (answer = await fetchReadyz(port));

  // Starting: NATS is not there yet.
  cluster.node(1).start();
  await waitFor(
    async () => (await readyzOf(port1)).code === 503,
    60_000,
    () => `a 503 while starting: ${JSON.stringify(answer)}`,
  );
  assert.match(answer!.reason, /^starting: connecting to NATS at nats:\/\/127\.0\.0\.1:\d+/);
  const starting = await fetchStatus(port1);
  assert.equal(starting.nodes.find((n) => n.id === "1")?.state, "starting");

  // Caught up: NATS comes, the node creates the streams and applies them to their end.
  nats = await startNatsServer({ port: natsPort });
  await waitFor(
    async () => (await readyzOf(port1)).code === 200,
    60_000,
    () => `a 200 once NATS is there: ${JSON.stringify(answer)}`,
  );
  assert.deepEqual(answer, { code: 200, ready: true, reason: "ready" });
  cluster.node(2).start();
  await waitFor(
    async () => (await readyzOf(port2)).code === 200,
    60_000,
    () => `node 2 ready: ${JSON.stringify(answer)}`,
  );
  sqlite3(cluster.node(2).spec.dbPath, "INSERT INTO books (id, title) VALUES (1, 'Persuasion');");
  let seen: unknown;
  await waitFor(
    async () => {
      const status = await fetchStatus(port1);
      seen = status;
      const shard = status.nodes.find((n) => n.id === "1")?.shards[0];
      const other = status.nodes.find((n) => n.id === "2");
      const stream = status.nats.streams[0];
      return (
        status.nodes.length === 2 &&
        other?.state === "ready" &&
        shard?.applied === 1 &&
        shard.lag === 0 &&
        status.nats.connected &&
        stream?.lastSeq === 1 &&
        stream.leader !== ""
      );
    },
    30_000,
    () => `node 1's /status to show both nodes ready, the change applied and the stream's state: ${JSON.stringify(seen)}`,
  );

  // NATS gone: not ready, and /status still answers, saying so.
  nats.kill("SIGKILL");
  await waitFor(
    async () => (await readyzOf(port1)).code === 503,
    30_000,
    () => `a 503 once NATS is gone: ${JSON.stringify(answer)}`,
  );
  assert.match(answer!.reason, /NATS/);
  const gone = await fetchStatus(port1);
  assert.equal(gone.nats.connected, false);
  assert.notEqual(gone.nodes.find((n) => n.id === "1")?.reason, "");

  // NATS back: ready again.
  await nats.restart();
  await waitFor(
    async () => (await readyzOf(port1)).code === 200,
    60_000,
    () => `a 200 once NATS is back: ${JSON.stringify(answer)}`,
  );

  // Stopped: node 2 sees node 1's last heartbeat, which says so; node 1 no longer answers.
  assert.equal(await cluster.node(1).stop(), 0);
  await waitFor(
    async () => (seen = (await fetchStatus(port2)).nodes).find((n) => n.id === "1")?.state === "stopped",
    30_000,
    () => `node 2 to show node 1 stopped: ${JSON.stringify(seen)}`,
  );
  await assert.rejects(fetchReadyz(port1));
});
