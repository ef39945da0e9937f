// The status model's rules: when a node counts as unreachable, and what makes the cluster unhealthy for -status.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { clusterProblems, observed, UNREACHABLE_AFTER_MS, type ClusterStatus, type NodeStatus } from "../../src/cluster/status-model.js";
import { disconnectedHealth } from "../../src/cluster/nats-health.js";
import { Metrics } from "../../src/metrics.js";

function node(id: string, overrides: Partial<NodeStatus> = {}): NodeStatus {
  return {
    id,
    version: "0.1.0",
    state: "ready",
    reason: "",
    lastSeen: 1_000_000,
    startedAt: 900_000,
    pendingChanges: 0,
    parkedChanges: 0,
    lastSnapshot: null,
    natsServer: "127.0.0.1:4222",
    publish: true,
    replicate: true,
    shards: [{ shard: 1, stream: "marmot-changes-1-1", applied: 5, lastSeq: 5, lag: 0, agreement: "unknown" }],
    ...overrides,
  };
}

const cluster = (nodes: NodeStatus[]): ClusterStatus => ({
  generatedAt: 0,
  self: "",
  heartbeatsReadAt: 0,
  nodes,
  nats: disconnectedHealth("test"),
  history: [],
});

describe("status model", () => {
  test("a node whose heartbeat is older than three beats is unreachable; a stopped one stays stopped", () => {
    const fresh = node("1");
    assert.equal(observed(fresh, fresh.lastSeen + 1000).state, "ready");
    const stale = observed(fresh, fresh.lastSeen + UNREACHABLE_AFTER_MS + 1);
    assert.equal(stale.state, "unreachable");
    assert.match(stale.reason, /no heartbeat for \d+ s/);
    assert.equal(observed(node("2", { state: "stopped" }), fresh.lastSeen + 3_600_000).state, "stopped");
  });

  test("the cluster is healthy only when every node is ready, none has parked changes and none differs", () => {
    assert.deepEqual(clusterProblems(cluster([node("1"), node("2")])), []);
    assert.deepEqual(clusterProblems(cluster([])), ["no node has written a heartbeat"]);
    assert.deepEqual(clusterProblems(cluster([node("1"), node("2", { state: "catching up", reason: "catching up: s applied 1 of 9" })])), [
      "node 2 is catching up: catching up: s applied 1 of 9",
    ]);
    assert.match(clusterProblems(cluster([node("1", { parkedChanges: 2 })]))[0]!, /node 1 has 2 parked change/);
    const differs = node("3", { shards: [{ shard: 1, stream: "s", applied: 1, lastSeq: 1, lag: 0, agreement: "differ" }] });
    assert.deepEqual(clusterProblems(cluster([differs])), ["node 3 differs from the others on shard 1"]);
    const noLeader = { ...cluster([node("1")]), nats: { ...disconnectedHealth("x"), jetstreamAnswering: false, error: "timeout" } };
    assert.deepEqual(clusterProblems(noLeader), ["JetStream does not answer: timeout"]);
  });
});

describe("replication latency histogram", () => {
  test("renders cumulative buckets, sum and count in Prometheus' format", () => {
    const metrics = new Metrics("marmot", "");
    metrics.replicationLatency.observe(0.003);
    metrics.replicationLatency.observe(0.2);
    metrics.replicationLatency.observe(100);
    const text = metrics.render();
    assert.match(text, /# TYPE marmot_replication_latency_seconds histogram/);
    assert.match(text, /^marmot_replication_latency_seconds_bucket\{le="0\.005"\} 1$/m);
    assert.match(text, /^marmot_replication_latency_seconds_bucket\{le="0\.25"\} 2$/m);
    assert.match(text, /^marmot_replication_latency_seconds_bucket\{le="60"\} 2$/m);
    assert.match(text, /^marmot_replication_latency_seconds_bucket\{le="\+Inf"\} 3$/m);
    assert.match(text, /^marmot_replication_latency_seconds_sum 100\.203$/m);
    assert.match(text, /^marmot_replication_latency_seconds_count 3$/m);
  });
});
