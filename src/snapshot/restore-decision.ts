// When a node must restore from a snapshot before it applies the streams, and which snapshot is good enough.
//
// Invariant: a node applies a stream only from a point the stream still holds. For every shard, the node's applied
// sequence must be at least the stream's first sequence - 1 (the messages before the first one are gone for good);
// otherwise it first restores a snapshot that covers that point on every shard, and applies on from the snapshot's
// sequences. A node whose database has no user table, in a cluster that has data, restores too: the streams alone
// cannot give it the schema and the rows they no longer hold. Nodes started together from the same copy (applied 0,
// streams empty or starting at 1) never restore: they miss nothing.

/** What a node knows of one shard's stream and of its own progress in it. */
export interface ShardPosition {
  stream: string;
  /** the last sequence this node applied (from __marmot__applied; 0 when none) */
  applied: number;
  /** the stream's first sequence now (JetStream: last + 1 once every message is gone, 0 when it never had one) */
  firstSeq: number;
  /** the stream's last sequence now (0 when it never had a message) */
  lastSeq: number;
}

export interface RestoreDecisionInput {
  shards: readonly ShardPosition[];
  /** whether the database holds at least one user table */
  hasUserTables: boolean;
  /** whether a snapshot is stored (a manifest exists) */
  snapshotStored: boolean;
}

/** Per stream, the sequence a snapshot must cover at least. */
export type Coverage = Record<string, number>;

export type RestoreDecision =
  | { restore: false }
  | {
      restore: true;
      /** for the log: why */
      reason: string;
      /** per stream, the sequence the snapshot must cover (see covers()) */
      needs: Coverage;
    };

/** The last sequence a stream no longer holds: what must be covered to apply it from where it starts. */
export function droppedUpTo(shard: Pick<ShardPosition, "firstSeq">): number {
  return Math.max(0, shard.firstSeq - 1);
}

/** Per stream, the sequence a snapshot must cover for a node to apply the streams after restoring it. */
export function coverageNeeded(shards: readonly Pick<ShardPosition, "stream" | "firstSeq">[]): Coverage {
  return Object.fromEntries(shards.map((s) => [s.stream, droppedUpTo(s)]));
}

/** Whether a snapshot of these sequences covers what is needed on every shard. */
export function covers(snapshotStreams: Readonly<Record<string, number>>, needs: Coverage): boolean {
  return Object.entries(needs).every(([stream, seq]) => (snapshotStreams[stream] ?? -1) >= seq);
}

/** The rule, in one place: see the invariant at the top of this file. */
export function decideRestore(input: RestoreDecisionInput): RestoreDecision {
  const needs = coverageNeeded(input.shards);
  const gaps = input.shards.filter((s) => s.applied < droppedUpTo(s));
  if (gaps.length > 0) {
    const where = gaps.map((s) => `${s.stream} applied ${s.applied}, first message ${s.firstSeq}`).join("; ");
    return { restore: true, reason: `the streams dropped messages this node never applied (${where})`, needs };
  }
  if (!input.hasUserTables) {
    const streamsHoldData = input.shards.some((s) => s.lastSeq > 0);
    if (input.snapshotStored || streamsHoldData) {
      const what = input.snapshotStored ? "a snapshot is stored" : "the streams hold changes";
      return { restore: true, reason: `the database has no table yet and the cluster has data (${what})`, needs };
    }
  }
  return { restore: false };
}
