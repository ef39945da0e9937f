// Reads pending changes out of the per-table change logs, with each row as the table holds it now, and removes them
// once JetStream has them.

import type { Database, Statement } from "better-sqlite3";
import type { ChangeOp, WireTable } from "../wire/codec.js";
import { quoteIdent } from "./quote.js";
import { changeLogTable, lastStoredSeqKey, LOG_ID_COLUMN, LOG_OP_COLUMN, META_TABLE, ROWID_KEY } from "./names.js";
import { readTable, rowidAlias, schemaVersion } from "./schema.js";
import type { TableInfo } from "./table.js";
import { changeLogKeyColumns, keyReferences, NOT_MARKER } from "./trigger-sql.js";
import type { SqlValue } from "../wire/value.js";

export interface PendingChange {
  wireTable: WireTable;
  op: ChangeOp;
  changeId: number;
  /** upsert: one per wireTable.columns, as the row was when read; delete: one per wireTable.keyColumns */
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
  /** highest change id handed out; rows at or below it are never read twice in one process */
  cursor: number;
}

/** Change logs one probe statement asks about at most (SQLite allows 500 terms in a compound SELECT). */
const PROBE_TABLES = 100;

/** The wire description of a captured table: rowid-keyed tables carry their rowid first. */
export function wireTableOf(table: TableInfo): WireTable {
  const columns = table.columns.map((c) => c.name);
  return {
    name: table.name,
    columns: table.rowidKeyed ? [ROWID_KEY, ...columns] : columns,
    keyColumns: [...table.keyColumns],
  };
}

/**
 * The SQL that is true when the LEFT JOIN found the row (`t`): a rowid table's row has a rowid, a WITHOUT ROWID
 * table's key columns are NOT NULL. (A keyed rowid table whose columns hide every rowid name: its first key column.)
 */
function rowPresentSql(table: TableInfo, tableKeys: string[]): string {
  if (table.withoutRowid) return `${tableKeys[0]} IS NOT NULL`;
  try {
    return `t.${quoteIdent(rowidAlias(table))} IS NOT NULL`;
  } catch {
    return `${tableKeys[0]} IS NOT NULL`;
  }
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
  /**
   * Which logs hold a change past their cursor, PROBE_TABLES logs a statement: one step instead of a query per
   * table. Most reads find nothing (a look after a file event), so this is what a look usually costs.
   */
  private probes: { readers: LogReader[]; statement: Statement }[] = [];
  /** PRAGMA schema_version when the readers were built */
  private schemaVersion = -1;
  /** see holdOnSchemaChange */
  private holdOnChange = false;

  constructor(private readonly db: Database) {}

  /** The highest sequence recorded by removeUpTo() for a stream (0 when none). */
  lastStoredSeq(stream: string): number {
    const row = this.db
      .prepare(`SELECT value FROM ${quoteIdent(META_TABLE)} WHERE key = ?`)
      .pluck(true)
      .get(lastStoredSeqKey(stream));
    return row === undefined || row === null ? 0 : Number(row);
  }

  /** (Re)build readers after capture was installed or the schema changed; cursors of unchanged tables are kept. */
  setTables(tables: readonly TableInfo[]): void {
    const next = new Map<string, LogReader>();
    for (const table of tables) next.set(table.name, this.logReader(table, this.readers.get(table.name)?.cursor ?? 0));
    this.useReaders(next);
    this.schemaVersion = schemaVersion(this.db);
  }

  private useReaders(readers: Map<string, LogReader>): void {
    this.readers = readers;
    const all = [...readers.values()];
    this.probes = [];
    for (let i = 0; i < all.length; i += PROBE_TABLES) {
      const chunk = all.slice(i, i + PROBE_TABLES);
      const id = quoteIdent(LOG_ID_COLUMN);
      const terms = chunk.map(
        (r, j) => `SELECT ${j} WHERE EXISTS (SELECT 1 FROM ${quoteIdent(changeLogTable(r.table.name))} WHERE ${id} > ? AND ${NOT_MARKER})`,
      );
      this.probes.push({ readers: chunk, statement: this.db.prepare(terms.join(" UNION ALL ")).pluck(true) });
    }
  }

  /** The logs holding a change not handed out yet. */
  private logsWithNews(): Set<LogReader> {
    const found = new Set<LogReader>();
    for (const { readers, statement } of this.probes) {
      for (const j of statement.all(...readers.map((r) => BigInt(r.cursor))) as bigint[]) found.add(readers[Number(j)]!);
    }
    return found;
  }

  /**
   * The statements of one table's log. `select` joins each change with the table's row of that key: the values
   * travel as they are when shipped, under the schema of that moment. `present` tells a row that is gone.
   */
  private logReader(table: TableInfo, cursor: number): LogReader {
    const log = quoteIdent(changeLogTable(table.name));
    const id = quoteIdent(LOG_ID_COLUMN);
    const logKeys = changeLogKeyColumns(table).map((k) => `l.${quoteIdent(k)}`);
    const tableKeys = keyReferences(table).map((k) => `t.${k}`);
    const join = tableKeys.map((k, i) => `${k} IS ${logKeys[i]}`).join(" AND ");
    const present = rowPresentSql(table, tableKeys);
    const values = [...(table.rowidKeyed ? [tableKeys[0]!] : []), ...table.columns.map((c) => `t.${quoteIdent(c.name)}`)];
    return {
      table,
      wireTable: wireTableOf(table),
      select: this.db
        .prepare(
          `SELECT l.${id}, l.${quoteIdent(LOG_OP_COLUMN)}, ${present}, ${[...logKeys, ...values].join(", ")} ` +
            `FROM ${log} AS l LEFT JOIN main.${quoteIdent(table.name)} AS t ON ${join} ` +
            `WHERE l.${id} > ? AND l.${NOT_MARKER} ORDER BY l.${id} LIMIT ?`,
        )
        .raw(true),
      deleteUpTo: this.db.prepare(`DELETE FROM ${log} WHERE ${id} <= ?`),
      deleteUpToExcept: this.db.prepare(`DELETE FROM ${log} WHERE ${id} <= ? AND ${id} NOT IN (SELECT value FROM json_each(?))`),
      count: this.db.prepare(`SELECT count(*) FROM ${log} WHERE ${NOT_MARKER}`).pluck(true),
      cursor,
    };
  }

  /**
   * The app changed the schema since the readers were built and marmot has not updated capture yet: each table is
   * read again as it is now, so its rows are read with the columns it has now. A table that is gone, or whose key
   * no longer matches its log's, waits for the capture update (installCapture) to bring its log in line.
   */
  private followSchema(): void {
    const version = schemaVersion(this.db);
    if (version === this.schemaVersion) return;
    const next = new Map<string, LogReader>();
    for (const reader of this.readers.values()) {
      const listed = this.db.prepare("SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?").get(reader.table.name) as
        | { wr: number | bigint }
        | undefined;
      if (listed === undefined) continue;
      let table: TableInfo;
      try {
        table = readTable(this.db, reader.table.name, Number(listed.wr) === 1);
      } catch {
        continue;
      }
      const logColumns = this.db.prepare("SELECT name FROM pragma_table_info(?, 'main')").pluck(true).all(changeLogTable(table.name)) as string[];
      if (!changeLogKeyColumns(table).every((k) => logColumns.includes(k))) continue;
      next.set(table.name, this.logReader(table, reader.cursor));
    }
    this.useReaders(next);
    this.schemaVersion = version;
  }

  /**
   * Read nothing while the schema differs from the one the readers were built for (until setTables): the node
   * first sends that schema change (schema-sync.ts), so that no row read under it leaves before it.
   */
  holdOnSchemaChange(): void {
    this.holdOnChange = true;
  }

  /**
   * Up to `limit` changes not handed out before, oldest first per table; stops early past `maxBytes`. One read
   * transaction: the logs and the rows they name are read at the same moment. An upsert whose row is gone by
   * then travels as a delete (a later change of that row in the log says what came after).
   */
  read(limit: number, maxBytes: number): PendingChange[] {
    return this.db.transaction(() => {
      if (this.holdOnChange && schemaVersion(this.db) !== this.schemaVersion) return [];
      this.followSchema();
      return this.readLogs(limit, maxBytes);
    })();
  }

  private readLogs(limit: number, maxBytes: number): PendingChange[] {
    const out: PendingChange[] = [];
    let bytes = 0;
    const withNews = this.logsWithNews();
    if (withNews.size === 0) return out;
    const all = [...this.readers.values()];
    this.startAt = all.length === 0 ? 0 : (this.startAt + 1) % all.length;
    const ordered = [...all.slice(this.startAt), ...all.slice(0, this.startAt)];
    for (const reader of ordered) {
      if (out.length >= limit || bytes >= maxBytes) break;
      if (!withNews.has(reader)) continue;
      const keyCount = reader.wireTable.keyColumns.length;
      // Row by row: a log holding several large rows must not be read into memory whole when the round's bytes are full.
      const rows = reader.select.iterate(BigInt(reader.cursor), limit - out.length) as IterableIterator<unknown[]>;
      for (const row of rows) {
        const changeId = Number(row[0] as bigint);
        const present = row[2] === 1 || row[2] === 1n;
        const key = row.slice(3, 3 + keyCount) as SqlValue[];
        const op: ChangeOp = row[1] === "upsert" && present ? "upsert" : "delete";
        const values = op === "upsert" ? (row.slice(3 + keyCount) as SqlValue[]) : key;
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

  /** Hand out again the changes of `table` after `changeId`: a round took only those up to it. */
  rewindTable(table: string, changeId: number): void {
    const reader = this.readers.get(table);
    if (reader && reader.cursor > changeId) reader.cursor = changeId;
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
  removeUpTo(upTo: ReadonlyMap<string, number>, keep?: ReadonlyMap<string, ReadonlySet<number>>, stored?: ReadonlyMap<string, number>): void {
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
