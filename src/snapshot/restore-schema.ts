// The steps of a restore inside its transaction: the user schema made equal to the snapshot's, its rows copied,
// and this node's own pending changes put back on top.

import type Database from "better-sqlite3";
import type { Logger } from "../log.js";
import {
  changeLogIndex,
  changeLogOwner,
  isCaptureTriggerName,
  isInternalName,
  LOG_ID_COLUMN,
  LOG_OP_COLUMN,
  LOG_ROWID_COLUMN,
  logValueColumn,
  OP_DELETE,
} from "../sqlite/names.js";
import { quoteIdent } from "../sqlite/quote.js";
import { foldCase } from "../sqlite/schema.js";
import { NOT_MARKER } from "../sqlite/trigger-sql.js";

interface SchemaObject {
  type: "table" | "index" | "view" | "trigger";
  name: string;
  tbl_name: string;
  sql: string | null;
}

/** One table to fill from the snapshot: its writable columns, and whether its rowid is copied too. */
export interface TablePlan {
  name: string;
  columns: string[];
  /** the name that reaches the rowid of a rowid table (its INTEGER PRIMARY KEY column, or rowid/_rowid_/oid) */
  rowid: string | undefined;
  /** whether `rowid` is one of `columns` (an INTEGER PRIMARY KEY), so it is not named twice */
  rowidIsColumn: boolean;
}

const ROWS_PER_STEP = 50_000;
const PROGRESS_EVERY_MS = 5000;

/** Every object of the user's in `schema`: marmot's and SQLite's own are left out. */
function userObjects(db: Database.Database, schema: string): SchemaObject[] {
  const rows = db.prepare(`SELECT type, name, tbl_name, sql FROM ${quoteIdent(schema)}.sqlite_master ORDER BY rowid`).all() as SchemaObject[];
  return rows.filter((row) => !isInternalName(row.name) && !isInternalName(row.tbl_name) && !foldCase(row.name).startsWith("sqlite_"));
}

/** Virtual tables and their shadow tables: SQLite maintains those itself, they are not copied row by row. */
function virtualTables(db: Database.Database, schema: string): Set<string> {
  const rows = db.prepare("SELECT name, type FROM pragma_table_list WHERE schema = ?").all(schema) as { name: string; type: string }[];
  return new Set(rows.filter((row) => row.type === "virtual" || row.type === "shadow").map((row) => foldCase(row.name)));
}

/**
 * Make main's user schema equal to the snapshot's (`snapshot` is the attached schema): triggers, views and indexes
 * go; tables the snapshot lacks or defines otherwise go; missing tables are created from the snapshot's own SQL
 * text; `copy` fills each table; then sqlite_sequence, indexes, views and triggers (last, so they never fire during
 * the copy). Returns how many tables and rows were copied. Virtual tables are not restored (a warning says so).
 */
export function syncSchema(
  db: Database.Database,
  snapshot: string,
  copy: (plan: TablePlan) => number,
  logger: Logger,
): { tables: number; rows: number } {
  const mainVirtual = virtualTables(db, "main");
  const snapVirtual = virtualTables(db, snapshot);
  const main = userObjects(db, "main").filter((o) => !mainVirtual.has(foldCase(o.tbl_name)));
  const snap = userObjects(db, snapshot);
  const skipped = snap.filter((o) => o.type === "table" && snapVirtual.has(foldCase(o.name)) && /^CREATE\s+VIRTUAL/i.test(o.sql ?? ""));
  for (const table of skipped) {
    logger.warn("the snapshot has a virtual table, which a restore does not copy yet; rebuild it after the restore", { table: table.name });
  }
  const snapPlain = snap.filter((o) => !snapVirtual.has(foldCase(o.tbl_name)));

  // Capture triggers are made again for the restored schema (installCapture, later in this transaction); without
  // them the copy runs without a trigger check per row.
  const captureTriggers = db.prepare("SELECT name, sql FROM main.sqlite_master WHERE type = 'trigger'").all() as {
    name: string;
    sql: string | null;
  }[];
  for (const trigger of captureTriggers) {
    if (isCaptureTriggerName(trigger.name)) db.exec(`DROP TRIGGER main.${quoteIdent(trigger.name)}`);
  }
  for (const type of ["trigger", "view", "index"] as const) {
    for (const object of main.filter((o) => o.type === type && o.sql !== null)) {
      db.exec(`DROP ${type.toUpperCase()} IF EXISTS main.${quoteIdent(object.name)}`);
    }
  }
  const snapTables = new Map(snapPlain.filter((o) => o.type === "table").map((o) => [foldCase(o.name), o]));
  for (const table of main.filter((o) => o.type === "table")) {
    const wanted = snapTables.get(foldCase(table.name));
    if (wanted === undefined || wanted.sql !== table.sql) db.exec(`DROP TABLE main.${quoteIdent(table.name)}`);
  }
  const kept = new Set(
    userObjects(db, "main")
      .filter((o) => o.type === "table")
      .map((o) => foldCase(o.name)),
  );
  let rows = 0;
  for (const table of snapTables.values()) {
    if (!kept.has(foldCase(table.name))) db.exec(table.sql!);
    rows += copy(tablePlan(db, snapshot, table.name));
  }
  copySequence(db, snapshot);
  for (const type of ["index", "view", "trigger"] as const) {
    for (const object of snapPlain.filter((o) => o.type === type && o.sql !== null)) db.exec(object.sql!);
  }
  return { tables: snapTables.size, rows };
}

export function tablePlan(db: Database.Database, schema: string, name: string): TablePlan {
  const columns = db.prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?, ?)").all(name, schema) as {
    name: string;
    type: string;
    pk: bigint | number;
    hidden: bigint | number;
  }[];
  const listed = db.prepare("SELECT wr FROM pragma_table_list WHERE schema = ? AND name = ?").get(schema, name) as
    | { wr: bigint | number }
    | undefined;
  const writable = columns.filter((c) => Number(c.hidden) === 0).map((c) => c.name);
  const withoutRowid = Number(listed?.wr ?? 0) === 1;
  const taken = new Set(columns.map((c) => foldCase(c.name)));
  const keyed = columns.filter((c) => Number(c.pk) > 0);
  const integerKey = keyed.length === 1 && keyed[0]!.type.toUpperCase() === "INTEGER" ? keyed[0]!.name : undefined;
  if (withoutRowid) return { name, columns: writable, rowid: undefined, rowidIsColumn: false };
  if (integerKey !== undefined) return { name, columns: writable, rowid: integerKey, rowidIsColumn: true };
  return { name, columns: writable, rowid: ["rowid", "_rowid_", "oid"].find((alias) => !taken.has(alias)), rowidIsColumn: false };
}

/**
 * Replace main's rows of one table by the snapshot's. A rowid table gets its rowids copied explicitly (rows of a
 * table without a primary key are keyed by their rowid on every node), in steps of rowids, so that progress can be
 * logged for a large table. Returns the rows copied.
 */
export function copyTableRows(db: Database.Database, snapshot: string, plan: TablePlan, logger: Logger): number {
  const target = `main.${quoteIdent(plan.name)}`;
  const source = `${quoteIdent(snapshot)}.${quoteIdent(plan.name)}`;
  const columns = plan.columns.map(quoteIdent);
  db.prepare(`DELETE FROM ${target}`).run();
  if (plan.rowid === undefined) {
    return db.prepare(`INSERT INTO ${target} (${columns.join(", ")}) SELECT ${columns.join(", ")} FROM ${source}`).run().changes;
  }
  const rowid = quoteIdent(plan.rowid);
  const all = (plan.rowidIsColumn ? columns : [rowid, ...columns]).join(", ");
  const stepEnd = db
    .prepare(`SELECT max(r) FROM (SELECT ${rowid} AS r FROM ${source} WHERE ${rowid} > ? ORDER BY ${rowid} LIMIT ${ROWS_PER_STEP})`)
    .pluck(true)
    .safeIntegers(true);
  const step = db.prepare(`INSERT INTO ${target} (${all}) SELECT ${all} FROM ${source} WHERE ${rowid} > ? AND ${rowid} <= ? ORDER BY ${rowid}`);
  const total = Number(db.prepare(`SELECT count(*) FROM ${source}`).pluck(true).safeIntegers(true).get() as bigint);
  let copied = 0;
  let lastReport = Date.now();
  const first = db.prepare(`SELECT min(${rowid}) FROM ${source}`).pluck(true).safeIntegers(true).get() as bigint | null;
  if (first === null) return 0;
  // Below every rowid; a table whose lowest rowid is -2^63 has that row copied on its own first.
  let after = first - 1n;
  if (first === -(2n ** 63n)) {
    copied += db.prepare(`INSERT INTO ${target} (${all}) SELECT ${all} FROM ${source} WHERE ${rowid} = ?`).run(first).changes;
    after = first;
  }
  for (;;) {
    const end = stepEnd.get(after) as bigint | null;
    if (end === null) break;
    copied += step.run(after, end).changes;
    after = end;
    if (Date.now() - lastReport >= PROGRESS_EVERY_MS) {
      lastReport = Date.now();
      logger.info("restoring a table", { table: plan.name, rows: copied, of: total });
    }
  }
  return copied;
}

/** AUTOINCREMENT counters of the user's tables as the snapshot has them (marmot's own rows stay). */
function copySequence(db: Database.Database, snapshot: string): void {
  const has = (schema: string) =>
    db.prepare(`SELECT 1 FROM ${quoteIdent(schema)}.sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'`).get() !== undefined;
  const notMarmot = "substr(name, 1, 8) <> '__marmot'";
  if (has("main")) db.exec(`DELETE FROM main.sqlite_sequence WHERE ${notMarmot}`);
  if (!has(snapshot)) return;
  db.exec(`INSERT INTO main.sqlite_sequence (name, seq) SELECT name, seq FROM ${quoteIdent(snapshot)}.sqlite_sequence WHERE ${notMarmot}`);
}

/** The rows of one table that this node changed and has not published yet, as the table held them before the restore. */
export interface PendingRows {
  table: string;
  /** the columns that reach each row's key (rowid/_rowid_/oid for a table keyed by its rowid) */
  keys: string[];
  /** the table's writable columns besides the key */
  columns: string[];
  rows: { deleted: boolean; key: unknown[]; values: unknown[] }[];
}

/**
 * This node's own changes that were never published (the app wrote them while the node was away) are the newest
 * writes of their rows. The change logs hold only each row's key: the rows themselves are read here, from the live
 * tables, BEFORE the copy replaces them (same transaction), and put back by reapplyPendingChanges() after it.
 */
export function readPendingRows(db: Database.Database, logger: Logger): PendingRows[] {
  const logs = db.prepare("SELECT name FROM main.sqlite_master WHERE type = 'table'").pluck(true).all() as string[];
  const out: PendingRows[] = [];
  for (const log of logs) {
    const owner = changeLogOwner(log);
    if (owner === undefined) continue;
    const rows = readPendingLog(db, log, owner, logger);
    if (rows !== undefined) out.push(rows);
  }
  return out;
}

function readPendingLog(db: Database.Database, log: string, owner: string, logger: Logger): PendingRows | undefined {
  const pending = db.prepare(`SELECT 1 FROM main.${quoteIdent(log)} WHERE ${NOT_MARKER} LIMIT 1`).get();
  if (pending === undefined) return undefined;
  const tableColumns = db.prepare("SELECT name, hidden FROM pragma_table_xinfo(?, 'main')").all(owner) as { name: string; hidden: bigint | number }[];
  if (tableColumns.length === 0) {
    logger.warn("this node's unpublished changes belong to a table that no longer exists; they stay in the change log", { table: owner });
    return undefined;
  }
  const logColumns = (db.prepare("SELECT name FROM pragma_table_info(?, 'main')").all(log) as { name: string }[]).map((c) => c.name);
  const logKey = logColumns.includes(LOG_ROWID_COLUMN)
    ? [LOG_ROWID_COLUMN]
    : (db.prepare("SELECT name FROM pragma_index_info(?, 'main') ORDER BY seqno").pluck(true).all(changeLogIndex(owner)) as string[]);
  const writable = tableColumns.filter((c) => Number(c.hidden) === 0).map((c) => c.name);
  const valueColumn = new Map(writable.map((c) => [logValueColumn(c), c]));
  const taken = new Set(tableColumns.map((c) => foldCase(c.name)));
  const rowidName = ["rowid", "_rowid_", "oid"].find((alias) => !taken.has(alias));
  const keyTarget = logKey.map((k) => (k === LOG_ROWID_COLUMN ? rowidName : valueColumn.get(k)));
  if (logKey.length === 0 || keyTarget.some((k) => k === undefined)) {
    logger.warn("this node's unpublished changes do not fit the table's key; they stay in the change log and are published", { table: owner });
    return undefined;
  }
  const keys = keyTarget as string[];
  const columns = writable.filter((c) => !keys.includes(c));
  const id = quoteIdent(LOG_ID_COLUMN);
  const join = keys.map((k, i) => `t.${quoteIdent(k)} IS l.${quoteIdent(logKey[i]!)}`).join(" AND ");
  // A row is there when the join found it: by its rowid, or (WITHOUT ROWID) by its NOT NULL key.
  const withoutRowid =
    rowidName === undefined ||
    Number(
      (db.prepare("SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?").get(owner) as { wr: bigint | number } | undefined)?.wr ?? 0,
    ) === 1;
  const present = withoutRowid ? `t.${quoteIdent(keys[0]!)} IS NOT NULL` : `t.${quoteIdent(rowidName)} IS NOT NULL`;
  const selected = [
    `l.${quoteIdent(LOG_OP_COLUMN)}`,
    present,
    ...logKey.map((k) => `l.${quoteIdent(k)}`),
    ...columns.map((c) => `t.${quoteIdent(c)}`),
  ];
  const newest = db
    .prepare(
      `SELECT ${selected.join(", ")} FROM main.${quoteIdent(log)} AS l LEFT JOIN main.${quoteIdent(owner)} AS t ON ${join} ` +
        `WHERE l.${id} IN (SELECT max(${id}) FROM main.${quoteIdent(log)} WHERE ${NOT_MARKER} GROUP BY ${logKey.map(quoteIdent).join(", ")}) ` +
        `ORDER BY l.${id}`,
    )
    .raw(true)
    .safeIntegers(true)
    .all() as unknown[][];
  const rows = newest.map((row) => ({
    // An upsert whose row is gone (deleted without a log row, as an apply does) puts back that it is gone.
    deleted: row[0] === OP_DELETE || !(row[1] === 1n || row[1] === 1),
    key: row.slice(2, 2 + keys.length),
    values: row.slice(2 + keys.length),
  }));
  return { table: owner, keys, columns, rows };
}

/**
 * Put this node's unpublished rows (read by readPendingRows before the copy) back onto the restored tables, only
 * the columns the restored table still has. The change-log rows stay, so the shipper publishes them afterwards.
 * Returns how many rows.
 */
export function reapplyPendingChanges(db: Database.Database, pending: readonly PendingRows[], logger: Logger): number {
  let reapplied = 0;
  for (const rows of pending) reapplied += reapplyRows(db, rows, logger);
  if (reapplied > 0) logger.info("kept this node's unpublished changes on top of the snapshot; they are published next", { rows: reapplied });
  return reapplied;
}

function reapplyRows(db: Database.Database, pending: PendingRows, logger: Logger): number {
  const owner = pending.table;
  const restored = db.prepare("SELECT name, hidden FROM pragma_table_xinfo(?, 'main')").all(owner) as { name: string; hidden: bigint | number }[];
  if (restored.length === 0) {
    logger.warn("the snapshot has no table for this node's unpublished changes; they stay in the change log", { table: owner });
    return 0;
  }
  const has = new Set(restored.filter((c) => Number(c.hidden) === 0).map((c) => foldCase(c.name)));
  const shadowed = new Set(restored.map((c) => foldCase(c.name)));
  const reachable = (k: string) => has.has(foldCase(k)) || (["rowid", "_rowid_", "oid"].includes(k) && !shadowed.has(k));
  if (!pending.keys.every(reachable)) {
    logger.warn("this node's unpublished changes do not fit the restored table's key; they stay in the change log and are published", {
      table: owner,
    });
    return 0;
  }
  const kept = pending.columns.map((c, i) => ({ c, i })).filter(({ c }) => has.has(foldCase(c)));
  const table = `main.${quoteIdent(owner)}`;
  const where = pending.keys.map((k) => `${quoteIdent(k)} IS ?`).join(" AND ");
  const targets = kept.map(({ c }) => quoteIdent(c));
  const remove = db.prepare(`DELETE FROM ${table} WHERE ${where}`);
  const update = targets.length > 0 ? db.prepare(`UPDATE ${table} SET ${targets.map((t) => `${t} = ?`).join(", ")} WHERE ${where}`) : undefined;
  const insertColumns = [...pending.keys.map(quoteIdent), ...targets].join(", ");
  const placeholders = [...pending.keys, ...targets].map(() => "?").join(", ");
  const insert = db.prepare(`INSERT INTO ${table} (${insertColumns}) VALUES (${placeholders})`);
  const replace = db.prepare(`INSERT OR REPLACE INTO ${table} (${insertColumns}) VALUES (${placeholders})`);
  let count = 0;
  for (const row of pending.rows) {
    const key = row.key;
    const rest = kept.map(({ i }) => row.values[i]);
    try {
      if (row.deleted) remove.run(...key);
      else if ((update?.run(...rest, ...key).changes ?? 0) === 0) {
        try {
          insert.run(...key, ...rest);
        } catch (err) {
          // Clashes with another row on a UNIQUE column: the later write wins, as the applier decides on every node.
          if (!String((err as { code?: string }).code).startsWith("SQLITE_CONSTRAINT")) throw err;
          replace.run(...key, ...rest);
        }
      }
      count += 1;
    } catch (err) {
      if (!String((err as { code?: string }).code).startsWith("SQLITE_CONSTRAINT")) throw err;
      logger.warn("an unpublished change does not fit the restored table; it stays in the change log and is published", {
        table: owner,
        reason: (err as Error).message,
      });
    }
  }
  return count;
}
