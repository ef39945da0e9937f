// When the cluster needs a new snapshot: before a stream drops a message no snapshot covers, and on the interval.
//
// Invariant kept: every message a stream drops is covered by the stored snapshot, so a node that missed it can
// restore and apply on. A stream of `max_entries` messages drops its oldest message on each new one once full. A node
// checks every few seconds (CHECK_PERIOD_MS in the node's housekeeping) and saves when, on some shard, more than half
// of the retention lies after the snapshot's sequence. The other half is the margin: it holds as long as a stream
// takes fewer than max_entries / 2 new messages in one check period plus one save (the time a snapshot of the
// database takes). A message is one shipping round of a node, not one row: with max_entries = 1024 that is about
// 500 rounds in a few seconds. Faster writers need a larger max_entries.

import type { Coverage } from "./restore-decision.js";

export interface StreamFill {
  stream: string;
  /** the stream's last sequence now */
  lastSeq: number;
  /** the stream's max_msgs (max_entries); 0 or less: unlimited, it never drops a message */
  maxMessages: number;
}

export interface FreshnessInput {
  streams: readonly StreamFill[];
  /** per stream, the sequence the stored snapshot covers; null when none is stored */
  snapshot: Coverage | null;
  /** when the stored snapshot was made (ms since the epoch); null when none is stored */
  snapshotCreatedAt: number | null;
  /** [snapshot] interval in ms; 0: off */
  intervalMs: number;
  now: number;
}

/** Why a snapshot is due now, or undefined when it is not. */
export function snapshotDue(input: FreshnessInput): string | undefined {
  for (const s of input.streams) {
    if (s.maxMessages <= 0) continue;
    const covered = input.snapshot?.[s.stream] ?? 0;
    const uncovered = s.lastSeq - covered;
    if (uncovered > s.maxMessages / 2) {
      return `${uncovered} messages of ${s.stream} are newer than the stored snapshot, more than half of its retention (${s.maxMessages})`;
    }
  }
  if (input.intervalMs > 0) {
    if (input.snapshotCreatedAt === null) return "no snapshot is stored yet and [snapshot] interval is set";
    if (input.now - input.snapshotCreatedAt >= input.intervalMs)
      return `the stored snapshot is older than [snapshot] interval (${input.intervalMs} ms)`;
  }
  return undefined;
}
