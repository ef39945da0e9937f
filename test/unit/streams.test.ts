// Stream names and the start-up warning about nats-server versions that let replicas diverge.

import assert from "node:assert/strict";
import { test } from "node:test";
import { serverVersionRisk, shardStreams } from "../../src/stream/streams.js";

test("each shard gets its own stream and subject, named with the shard count", () => {
  const streams = shardStreams({ nats: { streamPrefix: "marmot-changes", subjectPrefix: "marmot-change-log" }, replicationLog: { shards: 2 } } as never);
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
