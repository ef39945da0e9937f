// This node's state and readiness as it starts, catches up, loses NATS and stops (fakes for the streams and NATS;
// test/e2e/readiness.test.ts runs the real thing).

import assert from "node:assert/strict";
import { test } from "node:test";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { NodeStatusTracker, type ShardProgress } from "../../src/cluster/node-status.js";
import { defaultConfig } from "../../src/config/defaults.js";
import { silentLogger } from "../../src/log.js";
import { Metrics } from "../../src/metrics.js";
import { waitFor } from "../helpers/marmot.js";

/** A NATS connection that can report a disconnect, and a JetStream whose calls all fail (no heartbeat is written). */
function fakeNats() {
  const events: { type: string; server?: string }[] = [];
  let wake: (() => void) | undefined;
  const nc = {
    isClosed: () => false,
    getServer: () => "127.0.0.1:4222",
    status: () =>
      (async function* () {
        for (;;) {
          while (events.length > 0) yield events.shift()!;
          await new Promise<void>((resolve) => (wake = resolve));
        }
      })(),
  };
  const emit = (event: { type: string; server?: string }) => {
    events.push(event);
    wake?.();
  };
  const jsm = { streams: { info: () => Promise.reject(new Error("no JetStream in this test")) } };
  return { nc: nc as unknown as NatsConnection, jsm: jsm as unknown as JetStreamManager, emit };
}

test("starting, catching up to where the stream ended at the first look, ready once; NATS lost and back; stopping", async (t) => {
  const config = { ...defaultConfig(), nodeId: "4" };
  const tracker = new NodeStatusTracker(config, "1.2.3", { pendingChanges: () => 2, parkedChanges: () => 0 }, new Metrics(), silentLogger);
  let readyCalls = 0;
  tracker.onReady(() => readyCalls++);
  tracker.startingStep("connecting to NATS at nats://127.0.0.1:4222");
  assert.deepEqual(tracker.readiness(), { ready: false, reason: "starting: connecting to NATS at nats://127.0.0.1:4222" });
  assert.equal(tracker.selfStatus().state, "starting");

  let applied = 3;
  let end = 10;
  const shard: ShardProgress = { stream: "marmot-changes-1-1", appliedSequence: () => applied, streamEnd: async () => end };
  const { nc, jsm, emit } = fakeNats();
  tracker.attach(nc, jsm, [{ shard: 1, stream: "marmot-changes-1-1", subject: "s" }], [shard]);
  const abort = new AbortController();
  const running = tracker.run(abort.signal);
  t.after(async () => {
    abort.abort();
    await running;
    await tracker.stop();
  });

  await waitFor(
    () => tracker.readiness().reason === "catching up: marmot-changes-1-1 applied 3 of 10",
    5000,
    () => JSON.stringify(tracker.readiness()),
  );
  const catching = tracker.selfStatus();
  assert.equal(catching.state, "catching up");
  assert.deepEqual(catching.shards, [{ shard: 1, stream: "marmot-changes-1-1", applied: 3, lastSeq: 10, lag: 7, agreement: "unknown" }]);
  assert.equal(catching.pendingChanges, 2);

  // Messages published meanwhile do not move the goal: reaching the end seen at the first look is enough.
  end = 50;
  applied = 10;
  await waitFor(
    () => tracker.readiness().ready,
    5000,
    () => JSON.stringify(tracker.readiness()),
  );
  assert.equal(tracker.selfStatus().state, "ready");
  assert.equal(readyCalls, 1);

  emit({ type: "disconnect", server: "127.0.0.1:4222" });
  await waitFor(
    () => !tracker.readiness().ready,
    5000,
    () => "not ready without NATS",
  );
  assert.match(tracker.readiness().reason, /lost the connection to NATS at 127\.0\.0\.1:4222/);
  emit({ type: "reconnect", server: "127.0.0.1:4222" });
  await waitFor(
    () => tracker.readiness().ready,
    5000,
    () => "ready again",
  );
  assert.equal(readyCalls, 1, "the ready line is logged once");

  tracker.setRestoring(true);
  assert.equal(tracker.selfStatus().state, "restoring");
  tracker.setRestoring(false);
  tracker.setLastSnapshot({ takenAt: 5, sizeBytes: 4096 });
  tracker.setAgreementSource({ summary: () => ({ "4": { 1: "agree" } }) });
  const status = tracker.selfStatus();
  assert.deepEqual([status.lastSnapshot, status.shards[0]?.agreement], [{ takenAt: 5, sizeBytes: 4096 }, "agree"]);

  tracker.markStopping();
  assert.deepEqual(tracker.readiness(), { ready: false, reason: "stopping" });
  assert.equal(tracker.selfStatus().state, "stopped");
});
