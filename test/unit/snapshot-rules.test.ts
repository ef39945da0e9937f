// The rules of snapshots in a running cluster, without a network: when a node restores, which snapshot covers it,
// when a new snapshot is due, and the lease that lets one node at a time save.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { snapshotDue } from "../../src/snapshot/freshness.js";
import { SnapshotLease, type LeaseStore } from "../../src/snapshot/lease.js";
import { covers, decideRestore, type ShardPosition } from "../../src/snapshot/restore-decision.js";
import { parseSnapshotRequest } from "../../src/snapshot/snapshot-requests.js";
import { recordingLogger } from "../helpers/sqlite.js";

const shard = (stream: string, applied: number, firstSeq: number, lastSeq: number): ShardPosition => ({ stream, applied, firstSeq, lastSeq });

describe("restore decision", () => {
  it("a brand-new cluster started from the same copy does not restore (streams empty or starting at 1)", () => {
    for (const hasUserTables of [true, false]) {
      const empty = decideRestore({ shards: [shard("s-2-1", 0, 0, 0), shard("s-2-2", 0, 0, 0)], hasUserTables, snapshotStored: false });
      assert.equal(empty.restore, false);
    }
    const started = decideRestore({ shards: [shard("s-2-1", 0, 1, 40), shard("s-2-2", 0, 1, 7)], hasUserTables: true, snapshotStored: false });
    assert.equal(started.restore, false);
  });

  it("a node that applied up to just before the stream's first message does not restore", () => {
    const d = decideRestore({ shards: [shard("s-1-1", 99, 100, 500)], hasUserTables: true, snapshotStored: true });
    assert.equal(d.restore, false);
  });

  it("a node whose applied sequence is below the stream's first message - 1 restores, needing that point covered", () => {
    const d = decideRestore({ shards: [shard("s-2-1", 500, 200, 900), shard("s-2-2", 50, 100, 300)], hasUserTables: true, snapshotStored: true });
    assert.equal(d.restore, true);
    assert.ok(d.restore && /s-2-2 applied 50, first message 100/.test(d.reason), d.restore ? d.reason : "");
    assert.deepEqual(d.restore && d.needs, { "s-2-1": 199, "s-2-2": 99 });
  });

  it("a stream whose messages all expired (first = last + 1) still counts its dropped messages", () => {
    const d = decideRestore({ shards: [shard("s-1-1", 10, 301, 300)], hasUserTables: true, snapshotStored: true });
    assert.deepEqual(d.restore && d.needs, { "s-1-1": 300 });
  });

  it("a node without user tables restores when the cluster has data: a stored snapshot or messages in the streams", () => {
    const bySnapshot = decideRestore({ shards: [shard("s-1-1", 0, 0, 0)], hasUserTables: false, snapshotStored: true });
    assert.equal(bySnapshot.restore, true);
    const byMessages = decideRestore({ shards: [shard("s-1-1", 0, 1, 12)], hasUserTables: false, snapshotStored: false });
    assert.equal(byMessages.restore, true);
    assert.deepEqual(byMessages.restore && byMessages.needs, { "s-1-1": 0 });
  });

  it("covers: every stream at or above what is needed; a stream the snapshot lacks is not covered", () => {
    assert.equal(covers({ a: 10, b: 5 }, { a: 10, b: 4 }), true);
    assert.equal(covers({ a: 10, b: 3 }, { a: 10, b: 4 }), false);
    assert.equal(covers({ a: 10 }, { a: 0, b: 0 }), false);
    assert.equal(covers({ a: 0 }, { a: 0 }), true);
  });
});

describe("snapshot freshness", () => {
  const base = { snapshotCreatedAt: null, intervalMs: 0, now: 1_000_000 };

  it("is due once more than half of a stream's retention is newer than the stored snapshot", () => {
    const streams = [{ stream: "a", lastSeq: 600, maxMessages: 1024 }];
    assert.equal(snapshotDue({ ...base, streams, snapshot: { a: 100 } }), undefined);
    assert.match(snapshotDue({ ...base, streams, snapshot: { a: 80 } }) ?? "", /520 messages of a .* half of its retention \(1024\)/);
    assert.match(snapshotDue({ ...base, streams, snapshot: null }) ?? "", /600 messages/);
  });

  it("an unlimited stream never drops a message: no snapshot is due for it", () => {
    assert.equal(snapshotDue({ ...base, streams: [{ stream: "a", lastSeq: 1e9, maxMessages: -1 }], snapshot: null }), undefined);
  });

  it("[snapshot] interval forces one that often, and one when none is stored", () => {
    const streams = [{ stream: "a", lastSeq: 1, maxMessages: 1024 }];
    const snapshot = { a: 1 };
    assert.equal(snapshotDue({ streams, snapshot, snapshotCreatedAt: 995_000, intervalMs: 10_000, now: 1_000_000 }), undefined);
    assert.match(
      snapshotDue({ streams, snapshot, snapshotCreatedAt: 989_000, intervalMs: 10_000, now: 1_000_000 }) ?? "",
      /older than \[snapshot\] interval/,
    );
    assert.match(
      snapshotDue({ streams, snapshot: null, snapshotCreatedAt: null, intervalMs: 10_000, now: 1_000_000 }) ?? "",
      /no snapshot is stored/,
    );
  });
});

/** A KV key with a revision and an expiry, as JetStream keeps it; `failing` makes every call fail as NATS away would. */
class FakeLeaseStore implements LeaseStore {
  entry: { revision: number; expiresAt: number } | undefined;
  private revision = 0;
  failing = false;
  constructor(private readonly ttlMs: number) {}
  private live(): boolean {
    if (this.entry && Date.now() >= this.entry.expiresAt) this.entry = undefined;
    return this.entry !== undefined;
  }
  private check(): void {
    if (this.failing) throw new Error("TIMEOUT");
  }
  async create(): Promise<number> {
    this.check();
    if (this.live()) throw new Error("wrong last sequence: 3");
    this.entry = { revision: ++this.revision, expiresAt: Date.now() + this.ttlMs };
    return this.entry.revision;
  }
  async update(_key: string, _value: string, revision: number): Promise<number> {
    this.check();
    if (!this.live() || this.entry!.revision !== revision) throw new Error("wrong last sequence: 9");
    this.entry = { revision: ++this.revision, expiresAt: Date.now() + this.ttlMs };
    return this.entry.revision;
  }
  async delete(_key: string, opts: { previousSeq: number }): Promise<void> {
    this.check();
    if (this.live() && this.entry!.revision === opts.previousSeq) this.entry = undefined;
  }
}

const until = async (check: () => boolean, ms: number) => {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
};

describe("snapshot lease", () => {
  const TTL = 300;

  it("one holder at a time; renewed while held (it outlives its TTL); another node takes it once released", async () => {
    const kv = new FakeLeaseStore(TTL);
    const one = new SnapshotLease(kv, "node 1", recordingLogger(), TTL);
    const two = new SnapshotLease(kv, "node 2", recordingLogger(), TTL);
    const held = await one.tryAcquire();
    assert.ok(held);
    assert.equal(await two.tryAcquire(), undefined);
    await new Promise((r) => setTimeout(r, TTL * 3));
    assert.equal(held.signal.aborted, false, "renewals keep the lease");
    assert.equal(await two.tryAcquire(), undefined, "still held after three TTLs");
    await held.release();
    const second = await two.tryAcquire();
    assert.ok(second);
    await second.release();
  });

  it("a holder that cannot renew gives the lease up before it expires, so no two nodes ever save at once", async () => {
    const kv = new FakeLeaseStore(TTL);
    const one = new SnapshotLease(kv, "node 1", recordingLogger(), TTL);
    const held = await one.tryAcquire();
    assert.ok(held);
    const expiresAt = kv.entry!.expiresAt;
    kv.failing = true;
    assert.ok(await until(() => held.signal.aborted, TTL * 3), "the lease is given up");
    assert.ok(Date.now() < expiresAt, "given up before the entry can expire and be taken");
    assert.match(String((held.signal.reason as Error).message), /lost the snapshot lease/);
    await held.release();
  });

  it("a holder whose entry was taken over gives the lease up at its next renewal", async () => {
    const kv = new FakeLeaseStore(TTL);
    const held = await new SnapshotLease(kv, "node 1", recordingLogger(), TTL).tryAcquire();
    assert.ok(held);
    kv.entry = { revision: 1000, expiresAt: Date.now() + 10 * TTL };
    assert.ok(await until(() => held.signal.aborted, TTL * 2));
    await held.release();
  });
});

describe("snapshot request parsing", () => {
  const bytes = (text: string) => new TextEncoder().encode(text);

  it("reads a request a node sent", () => {
    assert.deepEqual(parseSnapshotRequest(bytes('{"from":"4","needs":{"s-1-1":98}}')), { from: "4", needs: { "s-1-1": 98 } });
  });

  it("ignores anything else on the subject, never throwing", () => {
    for (const text of [
      "",
      "not json",
      "[]",
      '{"from":4,"needs":{}}',
      '{"from":"4"}',
      '{"from":"4","needs":{"s":-1}}',
      '{"from":"4","needs":{"s":"9"}}',
      '{"from":"4","needs":{"s":1.5}}',
    ]) {
      assert.equal(parseSnapshotRequest(bytes(text)), undefined, text);
    }
  });
});
