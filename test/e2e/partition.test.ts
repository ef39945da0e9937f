// A network partition: three nodes in three network namespaces, one of them cut off while every app keeps writing.
// The majority side keeps replicating; after the partition heals, all nodes converge and nothing committed is lost.
//
// Needs root and `ip netns`; skipped with the reason otherwise. The nodes' addresses exist only inside the test's own
// namespaces (see helpers/netns.ts). MARMOT_TEST_SEED=N replays the operations; MARMOT_TEST_PROFILE=long partitions
// three times, 20 s each. Alone: node --test dist/test/e2e/partition.test.js

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { compareDeliveries, DELIVERY_LOGGING_TOML } from "../helpers/deliveries.js";
import { sleep, TestCluster, waitFor } from "../helpers/marmot.js";
import { natsServerVersion } from "../helpers/nats.js";
import { netnsUnavailable, TestNetwork } from "../helpers/netns.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";
import {
  longProfile,
  Random,
  startWriters,
  testSeeds,
  verifyOwnedRows,
  verifyWorkload,
  WorkloadRecord,
  WORKLOAD_SCHEMA,
} from "../helpers/workload.js";

useProcessCleanup();

// Runs wherever root can make network namespaces. On nats-server older than 2.10 it is skipped: there, after the
// partition heals, the replicas of a stream were seen holding different messages at the same sequence (this test's
// delivery report showed it: two messages in opposite orders on the cut-off node's replica), so the nodes reading
// them end apart in about 1 run of 10, which marmot cannot repair. scripts/setup.sh installs 2.10.
function unavailableHere(): string | undefined {
  let version: [number, number, number];
  try {
    version = natsServerVersion();
  } catch (err) {
    return `no usable nats-server: ${(err as Error).message}`;
  }
  const [major, minor, patch] = version;
  if (major < 2 || (major === 2 && minor < 10)) {
    return `nats-server ${major}.${minor}.${patch} is older than 2.10, whose stream replicas can diverge after a partition`;
  }
  return netnsUnavailable();
}
const unavailable = unavailableHere();
const long = longProfile();
const seed = testSeeds(1)[0]!;
const partitionMs = long ? 20_000 : 6_000;

describe("a network partition while the apps write (three network namespaces, R3)", { skip: unavailable ?? false }, () => {
  const rng = new Random(seed);
  const record = new WorkloadRecord();
  let network: TestNetwork | undefined;
  let cluster: TestCluster | undefined;
  after(async () => {
    // The marmots first: a namespace cannot be deleted from under its processes.
    await cluster?.stopAll();
    network?.destroy();
  });

  test("start three nodes, each in its own network namespace", async (t) => {
    t.diagnostic(`seed ${seed} (replay with MARMOT_TEST_SEED=${seed})`);
    const net = TestNetwork.create(3);
    network = net;
    cluster = await TestCluster.create({
      schema: WORKLOAD_SCHEMA,
      replicas: 3,
      shards: rng.between(2, 4),
      routeHost: (id) => net.address(id),
      launcher: (id) => net.launcher(id),
      // Debug lines name the message applied at each sequence: if the nodes end apart, the log tells whether the
      // streams served them different messages.
      toml: DELIVERY_LOGGING_TOML,
    });
    await cluster.startAll();
  });

  test("one node cut off: the other two go on replicating; healed, all converge and nothing committed is lost", async (t) => {
    const c = cluster!;
    const net = network!;
    const rounds = long ? 3 : 1;
    const writers = startWriters(c, seed, record, { batches: 1_000_000, phase: 1 });
    try {
      for (let round = 1; round <= rounds; round++) {
        await sleep(rng.between(500, 2000));
        const cut = rng.between(1, 3);
        const [a, b] = [1, 2, 3].filter((id) => id !== cut) as [number, number];
        t.diagnostic(`partition ${round}: node ${cut} cut off`);
        net.isolate(cut);
        const cutAt = Date.now();

        // A row committed on one majority node after the cut must reach the other majority node.
        const firstOnA = await waitFor(
          () => newJournalRow(record, a, cutAt),
          60_000,
          () => `an app on node ${a} to commit a batch`,
        );
        await waitFor(
          () => sqlite3(c.node(b).spec.dbPath, `SELECT count(*) FROM journal WHERE id = ${firstOnA}`).trim() === "1",
          120_000,
          () => `journal row ${firstOnA} of node ${a} to reach node ${b} during the partition`,
        );
        t.diagnostic(`partition ${round}: node ${a}'s write reached node ${b} ${Date.now() - cutAt} ms after the cut`);
        // Long enough for JetStream to move the cut-off node's stream leaders to the majority; that node's app keeps
        // writing meanwhile, and its changes wait in its change log.
        const batchesBefore = record.batches;
        await sleep(Math.max(0, cutAt + partitionMs - Date.now()));
        await waitFor(
          () => record.batches >= batchesBefore + 30,
          60_000,
          () => "the apps to go on writing during the partition",
        );
        for (const n of c.nodes) assert.ok(n.running, `marmot ${n.spec.id} keeps running during the partition:\n${n.tail()}`);

        net.heal(cut);
        t.diagnostic(`partition ${round}: healed after ${Date.now() - cutAt} ms`);
      }
      await sleep(1500);
    } finally {
      writers.stop();
      await writers.done;
    }
    assert.deepEqual(record.failures, [], "an app's write failed");
    let converged = false;
    try {
      t.diagnostic(await verifyWorkload(c, record, { timeoutMs: 180_000 }));
      converged = true;
    } finally {
      // Whether the streams served every node the same message at each sequence: tells a fault of the servers from
      // one of marmot when the nodes end apart.
      const disagreements = compareDeliveries(c.nodes);
      if (disagreements.length === 0) {
        t.diagnostic("every node applied the same message at every sequence, and each acknowledged message where JetStream stored it");
      } else {
        t.diagnostic(`${converged ? "converged, although " : ""}the nodes were not served the same messages:`);
        for (const line of disagreements) t.diagnostic(`  ${line}`);
      }
      for (const n of c.nodes) {
        const reissued = n.output.match(/duplicate of a message it does not hold/g)?.length ?? 0;
        if (reissued > 0) t.diagnostic(`node ${n.spec.id}: ${reissued} batches acknowledged as duplicates JetStream did not hold, sent again`);
        const restarted = n.output.match(/messages this node is not getting/g)?.length ?? 0;
        if (restarted > 0) t.diagnostic(`node ${n.spec.id}: a consumer that stopped delivering was started again ${restarted} times`);
      }
    }
    for (const n of c.nodes) assert.ok(n.running, `marmot ${n.spec.id} is still running:\n${n.tail()}`);
  });

  test("after the partition, each app's own rows are exactly as it last committed them", async () => {
    await verifyOwnedRows(cluster!, record);
  });

  test("SIGTERM stops every node cleanly", async () => {
    const codes = await Promise.all(cluster!.nodes.map((n) => n.stop()));
    assert.deepEqual(codes, [0, 0, 0]);
  });
});

if (unavailable !== undefined) console.log(`partition test skipped: ${unavailable}`);

/** The journal id of a batch that node `node`'s app committed after `since`, once there is one. */
function newJournalRow(record: WorkloadRecord, node: number, since: number): number | undefined {
  return record.commits.find((commit) => commit.node === node && commit.at > since)?.id;
}
