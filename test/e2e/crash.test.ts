// Crashes under load: marmot killed mid-publish and mid-apply, a node's nats-server killed, all of NATS down while
// the apps keep writing. After each, the nodes converge and every row an app committed is on every node.
//
// MARMOT_TEST_SEED=N replays the operations and the crash schedule (not their timing); MARMOT_TEST_PROFILE=long
// crashes more often, for longer.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, describe, test } from "node:test";
import { sleep, TestCluster, waitFor, type MarmotProcess } from "../helpers/marmot.js";
import { startNatsCluster, type TestNatsCluster } from "../helpers/nats.js";
import { untrackPid, useProcessCleanup, waitForExit } from "../helpers/processes.js";
import {
  longProfile,
  Random,
  startWriters,
  testSeeds,
  verifyOwnedRows,
  verifyWorkload,
  WorkloadRecord,
  WORKLOAD_SCHEMA,
  type WorkloadRun,
} from "../helpers/workload.js";

useProcessCleanup();

const long = longProfile();
const seed = testSeeds(1)[0]!;
console.log(`crash: seed ${seed} (replay with MARMOT_TEST_SEED=${seed})`);

/** Writers that run until told to stop: the crashes, not a batch count, decide how long a phase lasts. */
const UNBOUNDED = 1_000_000;

/** Stop the writers and check that no app write failed, whatever marmot was going through meanwhile. */
async function stopWriters(writers: WorkloadRun, record: WorkloadRecord): Promise<void> {
  writers.stop();
  await writers.done;
  assert.deepEqual(record.failures, [], "an app's write failed");
}

describe("marmot and its nats-server crash while the apps write (embedded NATS, R3)", () => {
  const rng = new Random(seed);
  const record = new WorkloadRecord();
  let cluster: TestCluster | undefined;
  after(async () => {
    await cluster?.stopAll();
  });

  test("start three nodes", async (t) => {
    const shards = rng.between(2, 4);
    t.diagnostic(`seed ${seed}, ${shards} shards`);
    cluster = await TestCluster.create({ schema: WORKLOAD_SCHEMA, replicas: 3, shards });
    await cluster.startAll();
  });

  test("marmot killed with SIGKILL at random moments and started again: nothing committed is lost", async (t) => {
    const c = cluster!;
    const crashes = long ? 12 : 3;
    const writers = startWriters(c, seed, record, { batches: UNBOUNDED, phase: 1 });
    try {
      for (let i = 0; i < crashes; i++) {
        // Writes flow all the time, so any moment is during a publish or an apply somewhere.
        await sleep(rng.between(200, 2500));
        const node = c.node(rng.between(1, 3));
        await node.crash();
        const crashedAt = Date.now();
        await sleep(rng.between(0, 1500));
        node.start();
        await node.waitRunning();
        const recalled = readFileSync(node.spec.logPath, "utf8").split("found changes of this node in the stream").length - 1;
        t.diagnostic(
          `crash ${i + 1}: node ${node.spec.id}, running again after ${Date.now() - crashedAt} ms (lines saying it read back its own stored changes, so far: ${recalled})`,
        );
      }
      await sleep(1000);
    } finally {
      await stopWriters(writers, record);
    }
    t.diagnostic(await verifyWorkload(c, record));
  });

  test("after the crashes, each app's own rows are exactly as it last committed them", async () => {
    await verifyOwnedRows(cluster!, record);
  });

  test("a node's nats-server killed: its marmot logs why and exits non-zero; started again, it catches up", async (t) => {
    const c = cluster!;
    const node = c.node(rng.between(1, 3));
    const writers = startWriters(c, seed, record, { batches: UNBOUNDED, phase: 2 });
    try {
      await sleep(rng.between(500, 2000));
      const natsPid = node.natsPid;
      assert.ok(natsPid !== undefined, `node ${node.spec.id} has an embedded nats-server pid`);
      t.diagnostic(`killing the nats-server (pid ${natsPid}) of node ${node.spec.id}`);
      process.kill(natsPid, "SIGKILL");
      assert.ok(await waitForExit(natsPid, 10_000), "the nats-server is gone");
      untrackPid(natsPid);
      const killedAt = Date.now();
      const code = await exitWithin(node, 60_000);
      t.diagnostic(`marmot ${node.spec.id} exited with code ${code} ${Date.now() - killedAt} ms after its nats-server died`);
      assert.equal(code, 1, `marmot exits with code 1; its output:\n${node.tail()}`);
      assert.match(node.output, /nats-server.*exited unexpectedly/, "marmot says why it stops");
      // The app goes on writing to the database while marmot is down.
      await sleep(rng.between(500, 1500));
      node.start();
      await node.waitRunning();
      t.diagnostic(`marmot ${node.spec.id} running again ${Date.now() - killedAt} ms after the kill`);
      await sleep(1000);
    } finally {
      await stopWriters(writers, record);
    }
    t.diagnostic(await verifyWorkload(c, record));
  });

  test("after the nats-server crash, each app's own rows are exactly as it last committed them", async () => {
    await verifyOwnedRows(cluster!, record);
  });

  test("SIGTERM stops every node cleanly", async () => {
    const codes = await Promise.all(cluster!.nodes.map((n) => n.stop()));
    assert.deepEqual(codes, [0, 0, 0]);
  });
});

describe("all of NATS down for a while as the apps keep writing (external 3-server cluster)", () => {
  const rng = new Random(seed ^ 0x5a5a5a5a);
  const record = new WorkloadRecord();
  let nats: TestNatsCluster | undefined;
  let cluster: TestCluster | undefined;
  after(async () => {
    await cluster?.stopAll();
    await nats?.stop();
  });

  test("start three nodes on an external NATS cluster", async () => {
    nats = await startNatsCluster(3);
    cluster = await TestCluster.create({ schema: WORKLOAD_SCHEMA, replicas: 3, shards: rng.between(2, 4), natsUrls: nats.urls });
    await cluster.startAll();
  });

  test("every server stopped, then started again: everything written meanwhile arrives everywhere", async (t) => {
    const c = cluster!;
    const servers = nats!.servers;
    const outages = long ? 3 : 1;
    const outageMs = long ? 15_000 : 5_000;
    const writers = startWriters(c, seed, record, { batches: UNBOUNDED, phase: 3 });
    try {
      for (let i = 0; i < outages; i++) {
        await sleep(rng.between(500, 2000));
        await Promise.all(servers.map((s) => s.stop()));
        const downAt = Date.now();
        const batchesBefore = record.batches;
        // Long enough for every publish and every pull in flight to fail, and for the apps to write a lot meanwhile.
        await sleep(outageMs);
        await waitFor(
          () => record.batches >= batchesBefore + 30,
          60_000,
          () => "the apps to go on writing while NATS is down",
        );
        for (const n of c.nodes) assert.ok(n.running, `marmot ${n.spec.id} keeps running while NATS is away:\n${n.tail()}`);
        await Promise.all(servers.map((s) => s.restart()));
        t.diagnostic(
          `outage ${i + 1}: all three nats-servers down for ${Date.now() - downAt} ms, ${record.batches - batchesBefore} batches written meanwhile`,
        );
      }
      await sleep(1500);
    } finally {
      await stopWriters(writers, record);
    }
    t.diagnostic(await verifyWorkload(c, record, { timeoutMs: 180_000 }));
    for (const n of c.nodes) assert.ok(n.running, `marmot ${n.spec.id} is still running:\n${n.tail()}`);
  });

  test("after the outage, each app's own rows are exactly as it last committed them", async () => {
    await verifyOwnedRows(cluster!, record);
  });

  test("SIGTERM stops every node cleanly", async () => {
    const codes = await Promise.all(cluster!.nodes.map((n) => n.stop()));
    assert.deepEqual(codes, [0, 0, 0]);
  });
});

/** marmot's exit code, once it exits on its own; fails the test if it does not within timeoutMs. */
async function exitWithin(node: MarmotProcess, timeoutMs: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<"running">((resolve) => (timer = setTimeout(() => resolve("running"), timeoutMs)));
  const outcome = await Promise.race([node.exited(), deadline]).finally(() => clearTimeout(timer));
  assert.notEqual(outcome, "running", `marmot ${node.spec.id} is still running ${timeoutMs} ms after its nats-server died:\n${node.tail()}`);
  return outcome as number | null;
}
