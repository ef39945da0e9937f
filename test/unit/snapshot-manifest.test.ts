// The snapshot manifest: strict parsing, object names, and the check that a snapshot fits this node's config.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { defaultConfig } from "../../src/config/defaults.js";
import { SnapshotInvalidError } from "../../src/errors.js";
import {
  checkManifestFits,
  encodeManifest,
  isSnapshotObjectName,
  parseManifest,
  snapshotObjectName,
  type SnapshotManifest,
} from "../../src/snapshot/manifest.js";

const good: SnapshotManifest = {
  format: 1,
  object: "snapshot-20261130T031500Z-ab12cd.db",
  size: 4096,
  sha256: "a".repeat(64),
  createdAt: "2026-11-30T03:15:00.000Z",
  nodeId: "1",
  streamPrefix: "marmot-changes",
  subjectPrefix: "marmot-change-log",
  shards: 1,
  streams: { "marmot-changes-1-1": 42 },
  tables: 3,
};

const bytes = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));

describe("snapshot manifest", () => {
  test("round-trips through its encoding", () => {
    assert.deepEqual(parseManifest(encodeManifest(good), "here"), good);
    const withPrevious = { ...good, previous: "snapshot-20261130T021500Z-00ff00.db" };
    assert.deepEqual(parseManifest(encodeManifest(withPrevious), "here"), withPrevious);
  });

  test("object names carry the time to the second and a random suffix", () => {
    const name = snapshotObjectName(new Date("2026-11-30T03:15:00.987Z"));
    assert.match(name, /^snapshot-20261130T031500Z-[0-9a-f]{6}\.db$/);
    assert.notEqual(snapshotObjectName(new Date(0)), snapshotObjectName(new Date(0)));
    assert.equal(isSnapshotObjectName("latest.json"), false);
    assert.equal(isSnapshotObjectName("snapshot-x/../../etc.db"), false);
  });

  test("anything missing, mistyped or unknown is refused naming the field and the place", () => {
    const cases: [unknown, RegExp][] = [
      [{ ...good, object: undefined }, /"object"/],
      [{ ...good, size: -1 }, /"size"/],
      [{ ...good, size: "4096" }, /"size"/],
      [{ ...good, sha256: "abc" }, /sha256/],
      [{ ...good, createdAt: "yesterday" }, /createdAt/],
      [{ ...good, streams: [] }, /"streams"/],
      [{ ...good, streams: { s: 1.5 } }, /stream "s"/],
      [{ ...good, shards: 0 }, /shards/],
      [{ ...good, object: "../latest.json" }, /not a snapshot data object/],
      [{ ...good, format: 2 }, /format 2/],
      [[good], /not a JSON object/],
    ];
    for (const [value, pattern] of cases) {
      assert.throws(
        () => parseManifest(bytes(value), "latest.json in folder /x"),
        (err: Error) => {
          assert.ok(err instanceof SnapshotInvalidError);
          assert.match(err.message, pattern);
          assert.match(err.message, /latest\.json in folder \/x/);
          return true;
        },
      );
    }
    assert.throws(() => parseManifest(new Uint8Array([0xff, 0xfe]), "m"), /not valid JSON/);
  });

  test("a snapshot for other streams does not fit, naming the setting", () => {
    const config = defaultConfig();
    checkManifestFits(good, config, "here");
    const other = structuredClone(config);
    other.nats.subjectPrefix = "other-log";
    assert.throws(() => checkManifestFits(good, other, "here"), /\[nats\] subject_prefix = "marmot-change-log", this node has "other-log"/);
    const shards = structuredClone(config);
    shards.replicationLog.shards = 2;
    assert.throws(() => checkManifestFits(good, shards, "here"), /\[replication_log\] shards = 1, this node has 2/);
    assert.throws(() => checkManifestFits({ ...good, streams: {} }, config, "here"), /does not record stream "marmot-changes-1-1"/);
  });
});
