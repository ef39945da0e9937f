// The rule that keeps the app's newer writes: which replicated changes of a row this node skips, and why.
//
// Invariant: a replicated change of a row is not applied while this node holds a newer change of that row that
// will land later in the same stream. Such a change is either still in the change log (not in the stream yet, or
// stored at a later sequence: an earlier one would have come back and left the log), or JetStream stored it at a
// sequence this node has not applied yet (recorded here, from the shipper's ack or, after a restart, from this
// node's own messages read back from the stream). That newer change overwrites the row on every node anyway;
// applying the older one here would only show the app its row going back for a while, and a write the app makes
// on that older state (an INSERT OR IGNORE that now finds no row) would be lost. Once the stream is applied up to
// the newer change, the record of it goes, trimmed by sequence, so its size is bounded by what is stored and not
// yet applied. Without an origin (publish = false) nothing is ever skipped.
//
// Not in a table with a UNIQUE constraint besides its key: there a change of one row can remove another (the row
// it clashes with, see Applier.replaceConflicting), so skipping it here would keep a row every other node removed,
// and a row that holds the app's unsent value could be removed here and nowhere else. Such a table applies every
// change in stream order; the app's newer write may go back for a while and wins again when it comes back.

import type { Database, Statement } from "better-sqlite3";
import { DecodeError } from "../errors.js";
import { decodeBatch, type ChangeBatch, type WireChange } from "../wire/codec.js";
import { rowKeyBytes, rowKeyString } from "../wire/shard.js";
import type { SqlValue } from "../wire/value.js";
import { changeLogTable, LOG_ID_COLUMN } from "./names.js";
import { quoteIdent } from "./quote.js";
import type { TableInfo } from "./table.js";
import { changeLogKeyColumns, NOT_MARKER } from "./trigger-sql.js";

/** Where a replicated change comes from: a message at `seq` of `stream`, written by this node (`own`) or another. */
export interface ChangeSource {
  stream: string;
  seq: number;
  own: boolean;
}

/** Statements on one table's change log, by row key: the local changes of a row that are not in the stream yet. */
interface PendingLookup {
  /** the lowest and highest change id in the whole change log */
  range: Statement;
  /** the newest change id of the row still in the change log, or null */
  newest: Statement;
  /** remove the row's changes up to a change id: the stream holds them (or a later change of the row) now */
  forget: Statement;
}

/**
 * What one apply transaction learns once and reuses: the range of change ids in each table's change log (null:
 * empty). The app cannot write during the transaction, so the range can only narrow, as own changes leave the log.
 */
export type OwnWritesScan = Map<string, { min: number; max: number } | null>;

/** The key of the row a change is about, in the order of its table's key columns. */
function changeKey(change: WireChange): SqlValue[] {
  const { table } = change;
  return change.op === "upsert" ? table.keyColumns.map((k) => change.values[table.columns.indexOf(k)]!) : change.values;
}

/** One ack of the shipper: the rows a message stored at `seq` holds. */
interface StoredMessage {
  seq: number;
  rowKeys: readonly string[];
}

export class OwnWrites {
  private readonly lookups = new Map<string, PendingLookup>();
  /**
   * Rows whose newer local change JetStream has stored but this node has not applied back yet, with where it was
   * stored: the change log no longer holds that change, yet an earlier message of the row must not undo it here.
   */
  private readonly stored = new Map<string, { stream: string; seq: number; shippedHere: boolean }>();
  /** per stream, the acks noted, in sequence order (acks arrive in any order), to trim once applied past them */
  private readonly storedByStream = new Map<string, StoredMessage[]>();
  /** row keys held by storedByStream, counting those a later ack of the row replaced */
  private queued = 0;

  /** `origin`: this node's batch origin when it publishes; undefined when it does not (nothing is kept then). */
  constructor(
    private readonly db: Database,
    private readonly origin: string | undefined,
  ) {}

  /** The schema changed: the change-log statements are prepared again. */
  reset(): void {
    this.lookups.clear();
  }

  /** Whether the rule applies at all: only on a node that publishes. */
  get enabled(): boolean {
    return this.origin !== undefined;
  }

  /** Rows in the record of stored-but-not-applied own changes (a metric). */
  get size(): number {
    return this.stored.size;
  }

  isOwn(batchOrigin: string): boolean {
    return this.origin !== undefined && batchOrigin === this.origin;
  }

  /**
   * The shipper's word that JetStream stored this node's latest changes of these rows (see rowKeyString) at `seq`
   * of `stream`, which this node has applied up to `applied`.
   */
  noteStored(stream: string, seq: number, rowKeys: readonly string[], applied: number, shippedHere = true): void {
    if (this.origin === undefined || seq <= applied || rowKeys.length === 0) return;
    let queue = this.storedByStream.get(stream);
    if (!queue) {
      queue = [];
      this.storedByStream.set(stream, queue);
    }
    for (const rowKey of rowKeys) {
      const previous = this.stored.get(rowKey);
      if (previous === undefined || previous.stream !== stream || previous.seq < seq) this.stored.set(rowKey, { stream, seq, shippedHere });
    }
    // Acks of one round come back in any order: insert by sequence, so trimming never stops at a later one.
    let at = queue.length;
    while (at > 0 && queue[at - 1]!.seq > seq) at--;
    queue.splice(at, 0, { seq, rowKeys: [...rowKeys] });
    this.queued += rowKeys.length;
    if (this.queued > 2 * this.stored.size + 1024) this.compact();
  }

  /**
   * The same word, read back from the stream at start: `data`, stored at `seq` before the last run ended and not
   * applied yet. Returns how many rows it holds (0 when the message is another node's, or not a batch at all).
   */
  noteStoredMessage(stream: string, seq: number, data: Uint8Array, applied: number): number {
    if (seq <= applied) return 0;
    const batch = this.ownBatch(data);
    if (batch === undefined) return 0;
    const rowKeys = batch.changes.map((change) => rowKeyString(rowKeyBytes(change.table.name, changeKey(change))));
    // Read back from the stream, not shipped by this run: the file may have been replaced since (a restore).
    this.noteStored(stream, seq, rowKeys, applied, false);
    return rowKeys.length;
  }

  /**
   * For a node that does not apply (replicate = false): its own message found in the stream at start. Its changes
   * leave the change log, as they would when applied back. `tableOf` gives the local table a change can be
   * matched with (undefined when it cannot). Returns how many change-log rows went.
   */
  forgetOwnMessage(data: Uint8Array, tableOf: (change: WireChange) => TableInfo | undefined): number {
    const batch = this.ownBatch(data);
    if (batch === undefined) return 0;
    let removed = 0;
    this.db.transaction(() => {
      for (const change of batch.changes) {
        const local = tableOf(change);
        if (local !== undefined) removed += this.lookup(local).forget.run(...changeKey(change), BigInt(change.changeId)).changes;
      }
    })();
    return removed;
  }

  /** Whether JetStream stored a message of this node (noted by this run) at every sequence from `from` to `to`. */
  storedEvery(stream: string, from: number, to: number): boolean {
    const seqs = new Set((this.storedByStream.get(stream) ?? []).map((message) => message.seq));
    for (let seq = from; seq <= to; seq++) if (!seqs.has(seq)) return false;
    return true;
  }

  /**
   * The database was replaced underneath (a snapshot was restored): a row's state no longer comes from what this run
   * shipped, so the shortcut of skipping its own change back (see supersedes) no longer holds for any row noted so far.
   */
  databaseReplaced(): void {
    for (const entry of this.stored.values()) entry.shippedHere = false;
  }

  /** After a commit up to `last`: the stored changes at or below it are applied (or passed), no longer pending. */
  appliedUpTo(stream: string, last: number): void {
    const queue = this.storedByStream.get(stream);
    if (!queue) return;
    let done = 0;
    while (done < queue.length && queue[done]!.seq <= last) {
      const { seq, rowKeys } = queue[done]!;
      for (const rowKey of rowKeys) {
        const entry = this.stored.get(rowKey);
        if (entry !== undefined && entry.stream === stream && entry.seq === seq) this.stored.delete(rowKey);
      }
      this.queued -= rowKeys.length;
      done++;
    }
    if (done > 0) queue.splice(0, done);
  }

  /**
   * Whether the replicated `change` of the row with `key` in `local` must be skipped (see the invariant above).
   * Own changes coming back from the stream first take their row's log entries up to them out of the change log:
   * those are sequenced now. Call inside the apply transaction, with one `scan` per transaction.
   * `unchangedSinceShipped`: nothing but the app and the applier's own statements can have changed rows of this
   * table here (no app trigger, no UNIQUE clash replaced rows), so this node's own change back at the very
   * sequence this run stored it at may be skipped too (the shortcut).
   */
  supersedes(
    local: TableInfo,
    key: readonly SqlValue[],
    change: WireChange,
    source: ChangeSource,
    scan: OwnWritesScan,
    unchangedSinceShipped = false,
  ): boolean {
    if (this.origin === undefined) return false;
    const lookup = this.lookup(local);
    // Most of the time the log is empty, or holds nothing this change could concern: no lookup per row then.
    let ids = scan.get(local.name);
    if (ids === undefined) {
      const [min, max] = lookup.range.get() as [bigint | null, bigint | null];
      ids = min === null || max === null ? null : { min: Number(min), max: Number(max) };
      scan.set(local.name, ids);
    }
    if (source.own && ids !== null && ids.min <= change.changeId) lookup.forget.run(...key, BigInt(change.changeId));
    // A table whose rows clash is not skipped in (see the top); its own changes still leave the log above.
    if (local.uniqueBeyondKey === true) return false;
    if (this.stored.size > 0) {
      const stored = this.stored.get(rowKeyString(rowKeyBytes(local.name, key)));
      if (stored !== undefined && stored.stream === source.stream && stored.seq > source.seq) return true;
      // This run shipped this very change of the row at this sequence. Since then the row either kept it (changes
      // of others sequenced before it were superseded above, later ones come after it) or has a newer local change,
      // which supersedes it: writing it again changes nothing either way, unless an app trigger or a UNIQUE clash
      // changed the row meanwhile.
      if (
        source.own &&
        unchangedSinceShipped &&
        stored !== undefined &&
        stored.shippedHere &&
        stored.stream === source.stream &&
        stored.seq === source.seq
      ) {
        return true;
      }
    }
    if (ids === null || (source.own && ids.max <= change.changeId)) return false;
    return lookup.newest.get(...key) != null;
  }

  /** The batch in `data` when this node wrote it (in this epoch); undefined for another node's or a non-batch. */
  private ownBatch(data: Uint8Array): ChangeBatch | undefined {
    if (this.origin === undefined) return undefined;
    try {
      const batch = decodeBatch(data);
      return batch.origin === this.origin ? batch : undefined;
    } catch (err) {
      if (err instanceof DecodeError) return undefined;
      throw err;
    }
  }

  /** Drops the row keys a later ack of the same row replaced, so the queues stay as small as the record. */
  private compact(): void {
    this.queued = 0;
    for (const [stream, queue] of this.storedByStream) {
      const kept: StoredMessage[] = [];
      for (const { seq, rowKeys } of queue) {
        const live = rowKeys.filter((rowKey) => {
          const entry = this.stored.get(rowKey);
          return entry !== undefined && entry.stream === stream && entry.seq === seq;
        });
        if (live.length === 0) continue;
        kept.push({ seq, rowKeys: live });
        this.queued += live.length;
      }
      if (kept.length === 0) this.storedByStream.delete(stream);
      else this.storedByStream.set(stream, kept);
    }
  }

  private lookup(table: TableInfo): PendingLookup {
    let lookup = this.lookups.get(table.name);
    if (lookup) return lookup;
    const log = quoteIdent(changeLogTable(table.name));
    const id = quoteIdent(LOG_ID_COLUMN);
    const where = changeLogKeyColumns(table)
      .map((k) => `${quoteIdent(k)} IS ?`)
      .join(" AND ");
    // Marker rows are not changes (see keepLastTriggerSql); there are one or two of them, at the top of the log.
    const first = (order: string) => `(SELECT ${id} FROM ${log} WHERE ${NOT_MARKER} ORDER BY ${id} ${order} LIMIT 1)`;
    lookup = {
      range: this.db.prepare(`SELECT ${first("ASC")}, ${first("DESC")}`).raw(true),
      newest: this.db.prepare(`SELECT max(${id}) FROM ${log} WHERE ${where} AND ${NOT_MARKER}`).pluck(true),
      forget: this.db.prepare(`DELETE FROM ${log} WHERE ${where} AND ${id} <= ? AND ${NOT_MARKER}`),
    };
    this.lookups.set(table.name, lookup);
    return lookup;
  }
}
