// Stream names, the start-up warning about nats-server versions that let replicas diverge, and the hint for a
// stream JetStream will not place.

import assert from "node:assert/strict";
import { test } from "node:test";
import { placementHint, serverVersionRisk, shardStreams } from "../../src/stream/streams.js";

test("each shard gets its own stream and subject, named with the shard count", () => {
  const streams = shardStreams({
    nats: { streamPrefix: "marmot-changes", subjectPrefix: "marmot-change-log" },
    replicationLog: { shards: 2 },
  } as never);
  assert.deepEqual(streams, [
    { shard: 1, stream: "marmot-changes-2-1", subject: "marmot-change-log-2-1" },
    { shard: 2, stream: "marmot-changes-2-2", subject: "marmot-change-log-2-2" },
  ]);
});

test("a replicated stream on nats-server older than 2.10 gets a warning that says what to do", () => {
  const risk = serverVersionRisk("2.9.10", 3);
  assert.match(risk ?? "", /nats-server 2\.9\.10 is older than 2\.10.*Upgrade nats-server/);
  assert.ok(serverVersionRisk("1.4.1", 3));
});

test("no warning on 2.10 and later, for a single replica, or when the version is unknown", () => {
  for (const version of ["2.10.27", "2.11.0", "2.12.1", "3.0.0"]) assert.equal(serverVersionRisk(version, 3), undefined, version);
  assert.equal(serverVersionRisk("2.9.10", 1), undefined);
  assert.equal(serverVersionRisk(undefined, 3), undefined);
  assert.equal(serverVersionRisk("nightly", 3), undefined);
});

test("a long refusal to place a replicated stream, with no reason given, gets a hint about the meta group", () => {
  const bare = new Error("no suitable peers for placement");
  assert.match(placementHint(bare, 3, 30_000) ?? "", /meta group lists fewer than 3 servers.*Restart the server missing/);
  assert.equal(placementHint(bare, 3, 29_999), undefined, "not before 30 s");
  assert.equal(placementHint(bare, 1, 60_000), undefined, "one replica never waits for peers");
  // JetStream names a reason (a server offline, short of storage): that reason is the answer, not a hint.
  assert.equal(placementHint(new Error("no suitable peers for placement, peer offline"), 3, 60_000), undefined);
  assert.equal(placementHint(new Error("insufficient resources"), 3, 60_000), undefined);
});
