// Reads pending changes out of the per-table change logs and removes them once JetStream has them.

import type { Database, Statement } from "better-sqlite3";
import type { ChangeOp, WireTable } from "../wire/codec.js";
import { quoteIdent } from "./quote.js";
import {
  changeLogTable,
  lastStoredSeqKey,
  LOG_ID_COLUMN,
  LOG_OP_COLUMN,
  LOG_ROWID_COLUMN,
  logValueColumn,
  META_TABLE,
  ROWID_KEY,
} from "./names.js";
import type { TableInfo } from "./table.js";
import { NOT_MARKER } from "./trigger-sql.js";
import type { SqlValue } from "../wire/value.js";

export interface PendingChange {
  wireTable: WireTable;
  op: ChangeOp;
  changeId: number;
  /** upsert: one per wireTable.columns; delete: one per wireTable.keyColumns */
  values: SqlValue[];
  key: SqlValue[];
  /** the table's rows all go to one shard (see shardOfRow) */
  wholeTableShard: boolean;
  /**
   * Rough encoded size (text counted at 3 bytes a character), to plan how changes are packed into messages. Never
   * a test of fit: the shipper decides that on the encoded bytes.
   */
  size: number;
}

interface LogReader {
  table: TableInfo;
  wireTable: WireTable;
  select: Statement;
  deleteUpTo: Statement;
  deleteUpToExcept: Statement;
  count: Statement;
  /** positions of the key columns among the upsert values */
  keyPositions: number[];
  /** highest change id handed out; rows at or below it are never read twice in one process */
  cursor: number;
}

/** The wire description of a captured table: rowid-keyed tables carry their rowid first. */
export function wireTableOf(table: TableInfo): WireTable {
  const columns = table.columns.map((c) => c.name);
  return {
    name: table.name,
    columns: table.rowidKeyed ? [ROWID_KEY, ...columns] : columns,
    keyColumns: [...table.keyColumns],
  };
}

function valueSize(v: SqlValue): number {
  if (v === null) return 1;
  if (typeof v === "string") return 5 + v.length * 3;
  if (typeof v === "object") return 5 + v.length;
  return 9;
}

export class ChangeLogReader {
  private readers = new Map<string, LogReader>();
  /** Which table a read starts with, turning each read, so one busy table cannot starve the others. */
  private startAt = 0;

  private recordStored?: Statement;

  constructor(private readonly db: Database) {}

  /** The highest sequence recorded by removeUpTo() for a stream (0 when none). */
  lastStoredSeq(stream: string): number {
    const row = this.db.prepare(`SELECT value FROM ${quoteIdent(META_TABLE)} WHERE key = ?`).pluck(true).get(lastStoredSeqKey(stream));
    return row === undefined || row === null ? 0 : Number(row);
  }

  /** (Re)build readers after capture was installed or the schema changed; cursors of unchanged tables are kept. */
  setTables(tables: readonly TableInfo[]): void {
    const next = new Map<string, LogReader>();
    for (const table of tables) {
      const previous = this.readers.get(table.name);
      const log = quoteIdent(changeLogTable(table.name));
      const valueColumns = [
        ...(table.rowidKeyed ? [quoteIdent(LOG_ROWID_COLUMN)] : []),
        ...table.columns.map((c) => quoteIdent(logValueColumn(c.name))),
      ];
      const wireTable = wireTableOf(table);
      const id = quoteIdent(LOG_ID_COLUMN);
      next.set(table.name, {
        table,
        wireTable,
        select: this.db
          .prepare(
            `SELECT ${id}, ${quoteIdent(LOG_OP_COLUMN)}, ${valueColumns.join(", ")} FROM ${log} WHERE ${id} > ? AND ${NOT_MARKER} ORDER BY ${id} LIMIT ?`,
          )
          .raw(true),
        deleteUpTo: this.db.prepare(`DELETE FROM ${log} WHERE ${id} <= ?`),
        deleteUpToExcept: this.db.prepare(
          `DELETE FROM ${log} WHERE ${id} <= ? AND ${id} NOT IN (SELECT value FROM json_each(?))`,
        ),
        count: this.db.prepare(`SELECT count(*) FROM ${log} WHERE ${NOT_MARKER}`).pluck(true),
        keyPositions: wireTable.keyColumns.map((k) => wireTable.columns.indexOf(k)),
        cursor: previous?.cursor ?? 0,
      });
    }
    this.readers = next;
  }

  /** Up to `limit` changes not handed out before, oldest first per table; stops early past `maxBytes`. */
  read(limit: number, maxBytes: number): PendingChange[] {
    const out: PendingChange[] = [];
    let bytes = 0;
    const all = [...this.readers.values()];
    this.startAt = all.length === 0 ? 0 : (this.startAt + 1) % all.length;
    const ordered = [...all.slice(this.startAt), ...all.slice(0, this.startAt)];
    for (const reader of ordered) {
      if (out.length >= limit || bytes >= maxBytes) break;
      // Row by row: a log holding several large rows must not be read into memory whole when the round's bytes are full.
      const rows = reader.select.iterate(BigInt(reader.cursor), limit - out.length) as IterableIterator<unknown[]>;
      for (const row of rows) {
        const changeId = Number(row[0] as bigint);
        const op = row[1] as ChangeOp;
        const all = row.slice(2) as SqlValue[];
        const key = reader.keyPositions.map((p) => all[p]!);
        const values = op === "upsert" ? all : key;
        let size = 16;
        for (const v of values) size += valueSize(v);
        out.push({ wireTable: reader.wireTable, op, changeId, values, key, wholeTableShard: reader.table.uniqueBeyondKey === true, size });
        reader.cursor = changeId;
        bytes += size;
        if (bytes >= maxBytes) break;
      }
    }
    return out;
  }

  /** Forget what was handed out, so the next read starts again from the oldest pending row. */
  rewind(): void {
    for (const reader of this.readers.values()) reader.cursor = 0;
  }

  /**
   * Remove every change of each table up to the given change id (they are in JetStream now),
   * except the ids in `keep` (changes that could not be sent and must stay in the log). `stored` gives, per stream,
   * the highest sequence at which the messages holding them were stored; it is recorded in the same transaction.
   */
  removeUpTo(
    upTo: ReadonlyMap<string, number>,
    keep?: ReadonlyMap<string, ReadonlySet<number>>,
    stored?: ReadonlyMap<string, number>,
  ): void {
    this.db.transaction(() => {
      for (const [stream, seq] of stored ?? []) {
        this.recordStored ??= this.db.prepare(
          `INSERT INTO ${quoteIdent(META_TABLE)} (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)`,
        );
        this.recordStored.run(lastStoredSeqKey(stream), BigInt(seq));
      }
      for (const [table, changeId] of upTo) {
        const reader = this.readers.get(table);
        if (!reader) continue;
        const kept = keep?.get(table);
        if (kept && kept.size > 0) reader.deleteUpToExcept.run(BigInt(changeId), JSON.stringify([...kept]));
        else reader.deleteUpTo.run(BigInt(changeId));
      }
    })();
  }

  /** Rows waiting in every change log (a full count: call it now and then, not per change). */
  pendingCount(): number {
    let total = 0;
    for (const reader of this.readers.values()) total += Number(reader.count.get() as bigint);
    return total;
  }

  /** Drop every pending change (publish = false: nothing will ever send them); returns how many there were. */
  discardAll(): number {
    let removed = 0;
    this.db.transaction(() => {
      for (const reader of this.readers.values()) {
        const pending = Number(reader.count.get() as bigint);
        if (pending === 0) continue;
        removed += pending;
        // Markers too: the newest row's leaving puts one marker back (see keepLastTriggerSql).
        reader.deleteUpTo.run(BigInt(Number.MAX_SAFE_INTEGER));
      }
    })();
    return removed;
  }
}
