// Randomized convergence: three marmot nodes, three apps hammering the same hot rows at once; afterwards every node
// holds the same rows, only values some app wrote, each app's own rows exactly as it last committed them, and every
// committed journal row. Four shards, and a table whose rows clash on a UNIQUE column across them.
//
// MARMOT_TEST_SEED=N replays one seed (the operations, not their interleaving); MARMOT_TEST_PROFILE=long runs
// ten seeds with more operations.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { TestCluster } from "../helpers/marmot.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { longProfile, startWriters, testSeeds, verifyOwnedRows, verifyWorkload, WorkloadRecord, WORKLOAD_SCHEMA } from "../helpers/workload.js";

useProcessCleanup();

const long = longProfile();
const seeds = testSeeds(long ? 10 : 1);
const batchesPerWriter = long ? 400 : 200;

describe("random concurrent writes on three nodes converge", () => {
  const clusters: TestCluster[] = [];
  after(async () => {
    await Promise.allSettled(clusters.map((c) => c.stopAll()));
  });

  for (const seed of seeds) {
    test(`seed ${seed}`, async (t) => {
      // Four shards: rows of one table that clash on a UNIQUE value would otherwise sit on different streams.
      const shards = 4;
      t.diagnostic(`seed ${seed} (replay with MARMOT_TEST_SEED=${seed}); ${shards} shards, ${batchesPerWriter} batches per writer`);
      console.log(`random-convergence: seed ${seed}, ${shards} shards`);
      const cluster = await TestCluster.create({ schema: WORKLOAD_SCHEMA, replicas: 3, shards });
      clusters.push(cluster);
      await cluster.startAll();

      const record = new WorkloadRecord();
      const writers = startWriters(cluster, seed, record, { batches: batchesPerWriter });
      await writers.done;
      assert.deepEqual(record.failures, [], "an app's write failed");

      const summary = await verifyWorkload(cluster, record);
      t.diagnostic(summary);
      console.log(`random-convergence: seed ${seed}: ${summary}`);
      await verifyOwnedRows(cluster, record);

      const codes = await Promise.all(cluster.nodes.map((n) => n.stop()));
      assert.deepEqual(codes, [0, 0, 0]);
    });
  }
});
