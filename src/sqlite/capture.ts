// Installs and keeps current marmot's capture: internal tables, one change log and three triggers per user table.

import { randomBytes } from "node:crypto";
import type Database from "better-sqlite3";
import type { Logger, LogFields } from "../log.js";
import {
  APPLIED_TABLE,
  APPLYING_TABLE,
  captureSignatureKey,
  changeLogIndex,
  changeLogOwner,
  changeLogTable,
  isCaptureTriggerName,
  keepLastTriggerName,
  lastChangeIdKey,
  LOG_ID_COLUMN,
  LOG_MARKER_OP,
  LOG_OP_COLUMN,
  logValueColumn,
  META_EPOCH_KEY,
  META_SEQUENCE_KEY,
  META_TABLE,
  PARKED_TABLE,
} from "./names.js";
import { quoteIdent } from "./quote.js";
import { foldCase, readSchema, type SkippedTable, type TableFilter } from "./schema.js";
import type { TableInfo } from "./table.js";
import {
  captureTriggers,
  changeLogColumns,
  createChangeLogIndexSql,
  createChangeLogSql,
  keepLastTriggerSql,
  logAllRowsSql,
  NOT_MARKER,
} from "./trigger-sql.js";

import { guardUserTriggers } from "./user-triggers.js";

export { schemaVersion } from "./schema.js";

export type CaptureOptions = TableFilter;

export interface CaptureResult {
  /** the tables whose changes are now captured, sorted by name */
  tables: TableInfo[];
  /** random id of this installation, kept until a cleanup removes marmot from the file */
  epoch: string;
  skipped: SkippedTable[];
  /** tables whose every row was logged by this install, since they were made again (see captureTable) */
  relogged: string[];
}

const INTERNAL_TABLES_SQL = [
  `CREATE TABLE IF NOT EXISTS ${quoteIdent(APPLYING_TABLE)} (x INTEGER)`,
  `CREATE TABLE IF NOT EXISTS ${quoteIdent(APPLIED_TABLE)} (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS ${quoteIdent(META_TABLE)} (key TEXT PRIMARY KEY, value)`,
  `CREATE TABLE IF NOT EXISTS ${quoteIdent(PARKED_TABLE)} (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, ` +
    `seq INTEGER NOT NULL, tbl TEXT, reason TEXT NOT NULL, payload BLOB NOT NULL, parked_at INTEGER NOT NULL)`,
];

interface Note {
  level: "debug" | "info" | "warn";
  message: string;
  fields?: LogFields;
}

interface TriggerRow {
  name: string;
  tbl_name: string;
  sql: string | null;
}

/**
 * Make the capture match the current schema, in one transaction: creates what is missing, extends change logs of
 * tables that gained columns (pending rows are kept), recreates triggers whose text differs, and drops triggers and
 * empty change logs of tables no longer captured. When nothing changed it writes nothing, so the schema version
 * stays the same: call it at start and whenever `schemaVersion()` moves.
 */
export function installCapture(db: Database.Database, logger: Logger, options: CaptureOptions = {}): CaptureResult {
  const notes: Note[] = [];
  const install = db.transaction((): CaptureResult => {
    const sequenceBefore = sequenceState(db);
    const schema = readSchema(db, options);
    for (const sql of INTERNAL_TABLES_SQL) db.exec(sql);
    const epoch = ensureEpoch(db, sequenceBefore, notes);

    const triggers = new Map<string, TriggerRow>();
    for (const row of db.prepare("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'").all() as TriggerRow[]) {
      triggers.set(row.name, row);
    }
    const wantedTriggers = new Set<string>();
    const relogged: string[] = [];
    for (const table of schema.tables) {
      if (captureTable(db, table, triggers, notes)) relogged.push(table.name);
      for (const trigger of captureTriggers(table)) wantedTriggers.add(trigger.name);
    }
    dropStaleTriggers(db, triggers, wantedTriggers, notes);
    const captured = new Set(schema.tables.map((table) => foldCase(table.name)));
    const guarded = guardUserTriggers(db, (table) => captured.has(foldCase(table)));
    if (guarded.length > 0) {
      notes.push({
        level: "info",
        message: "guarded the app's triggers so they do not fire again when marmot applies replicated rows",
        fields: { triggers: guarded },
      });
    }
    dropStaleChangeLogs(db, new Set(schema.tables.map((table) => table.name)), notes);
    return { tables: schema.tables, epoch, skipped: schema.skipped, relogged };
  });
  const result = install.immediate();

  for (const skipped of result.skipped) logger.info(`not capturing table "${skipped.name}": ${skipped.reason}`);
  const existing = new Set(result.tables.map((table) => foldCase(table.name)));
  for (const skipped of result.skipped) existing.add(foldCase(skipped.name));
  for (const name of options.include ?? []) {
    if (!existing.has(foldCase(name))) logger.warn(`the include list names table "${name}", which does not exist`);
  }
  for (const note of notes) logger[note.level](note.message, note.fields);
  return result;
}

/** "absent", or the highest rowid of sqlite_sequence ("0" when empty). */
function sequenceState(db: Database.Database): string {
  if (!tableExists(db, "sqlite_sequence")) return "absent";
  const row = db.prepare("SELECT coalesce(max(rowid), 0) AS top FROM sqlite_sequence").get() as { top: bigint | number };
  return String(row.top);
}

function ensureEpoch(db: Database.Database, sequenceBefore: string, notes: Note[]): string {
  const row = db.prepare(`SELECT value FROM ${quoteIdent(META_TABLE)} WHERE key = ?`).get(META_EPOCH_KEY) as { value: unknown } | undefined;
  if (row !== undefined) return String(row.value);
  const epoch = randomBytes(8).toString("hex");
  const insert = db.prepare(`INSERT INTO ${quoteIdent(META_TABLE)} (key, value) VALUES (?, ?)`);
  insert.run(META_EPOCH_KEY, epoch);
  // Marmot's AUTOINCREMENT tables add rows to sqlite_sequence (and may create it): cleanup undoes that.
  insert.run(META_SEQUENCE_KEY, sequenceBefore);
  notes.push({ level: "info", message: `installed marmot capture (epoch ${epoch})` });
  return epoch;
}

/** Returns true when every row of the table was logged (it was made again; see below). */
function captureTable(db: Database.Database, table: TableInfo, triggers: Map<string, TriggerRow>, notes: Note[]): boolean {
  const logName = changeLogTable(table.name);
  const signature = signatureOf(table);
  const storedSignature = metaValue(db, captureSignatureKey(table.name));
  const logColumns = columnNames(db, logName);
  const hadTriggers = captureTriggers(table).some((trigger) => triggers.get(trigger.name)?.tbl_name === table.name);
  let changed = false;
  if (logColumns.length === 0) {
    createChangeLog(db, table, metaValue(db, lastChangeIdKey(table.name)));
    changed = true;
  } else {
    changed = alterChangeLog(db, table, logColumns, storedSignature, notes) || changed;
    if (changed) for (const trigger of captureTriggers(table)) triggers.delete(trigger.name);
  }
  if (isAutoincrementLog(db, logName) && !hasPendingRows(db, logName)) {
    // Written by an earlier marmot: rebuilt without AUTOINCREMENT once nothing waits in it, its ids going on.
    const lastId = lastChangeId(db, logName);
    db.exec(`DROP TABLE ${quoteIdent(logName)}`);
    createChangeLog(db, table, lastId);
    notes.push({ level: "info", message: `rebuilt the change log of table "${table.name}" without AUTOINCREMENT`, fields: { last_id: lastId } });
    changed = true;
  }
  changed = ensureKeepLastTrigger(db, table) || changed;
  changed = ensureKeyIndex(db, table) || changed;

  // A captured table whose triggers are gone was dropped and made again (the twelve-step rebuild, say): whatever
  // the app wrote into it before marmot came back was not logged, so every row is logged now. Not while marmot
  // itself writes (a snapshot restore drops the triggers and fills the tables with rows that are not changes).
  let relogged = false;
  if (logColumns.length > 0 && storedSignature !== undefined && !hadTriggers && !marmotApplying(db)) {
    const logged = db.prepare(logAllRowsSql(table)).run().changes;
    notes.push({ level: "info", message: `table "${table.name}" was made again; logged its ${logged} rows`, fields: { rows: logged } });
    relogged = true;
  }

  for (const trigger of captureTriggers(table)) {
    const current = triggers.get(trigger.name);
    if (current !== undefined && current.sql === trigger.sql && current.tbl_name === table.name) continue;
    db.exec(`DROP TRIGGER IF EXISTS ${quoteIdent(trigger.name)}`);
    db.exec(trigger.sql);
    changed = true;
  }

  if (storedSignature !== signature) setMeta(db, captureSignatureKey(table.name), signature);
  if (changed) {
    const verb = storedSignature === undefined ? "capturing" : "updated capture of";
    notes.push({ level: "info", message: `${verb} table "${table.name}"`, fields: { key: table.keyColumns } });
  }
  return relogged;
}

/**
 * Bring an existing change log to the columns `table` needs: the op and the key. An empty log is simply rebuilt.
 * A log with pending rows keeps them: a renamed key column is renamed in the log too, and value columns (a log an
 * earlier marmot made, which copied every value) are dropped, since values are read from the table when shipped.
 * Only a key that changed otherwise (a rebuild with another primary key) cannot keep them: the log is made again
 * and every row of the table is logged instead, so replicas get the table's rows as they are now.
 */
function alterChangeLog(db: Database.Database, table: TableInfo, logColumns: string[], storedSignature: string | undefined, notes: Note[]): boolean {
  const logName = changeLogTable(table.name);
  const wanted = changeLogColumns(table);
  const have = new Set(logColumns.map(foldCase));
  const wantedFolded = new Set(wanted.map(foldCase));
  const missing = wanted.filter((column) => !have.has(foldCase(column)));
  const extra = logColumns.filter((column) => !wantedFolded.has(foldCase(column)));
  if (missing.length === 0 && extra.length === 0) return false;

  // The old triggers name the log's columns: SQLite checks them on every ALTER of the log. They are made again.
  for (const trigger of captureTriggers(table)) db.exec(`DROP TRIGGER IF EXISTS ${quoteIdent(trigger.name)}`);
  if (!hasPendingRows(db, logName)) {
    const autoincrement = isAutoincrementLog(db, logName);
    const lastId = rebuildChangeLog(db, table, logName);
    if (autoincrement) {
      notes.push({ level: "info", message: `rebuilt the change log of table "${table.name}" without AUTOINCREMENT`, fields: { last_id: lastId } });
    }
    return true;
  }

  // ALTER TABLE RENAME COLUMN keeps a column's position; a log column whose user column was renamed follows it.
  const previous = parseSignature(storedSignature);
  if (previous !== undefined) {
    const length = Math.min(previous.columns.length, table.columns.length);
    for (let i = 0; i < length; i += 1) {
      const from = logValueColumn(previous.columns[i]!.name);
      const to = logValueColumn(table.columns[i]!.name);
      const fromIndex = extra.findIndex((column) => foldCase(column) === foldCase(from));
      const toIndex = missing.findIndex((column) => foldCase(column) === foldCase(to));
      if (fromIndex < 0 || toIndex < 0) continue;
      db.exec(`ALTER TABLE ${quoteIdent(logName)} RENAME COLUMN ${quoteIdent(extra[fromIndex]!)} TO ${quoteIdent(to)}`);
      extra.splice(fromIndex, 1);
      missing.splice(toIndex, 1);
    }
  }
  if (missing.length > 0) {
    const lastId = lastChangeId(db, logName);
    db.exec(`DROP TABLE ${quoteIdent(logName)}`);
    createChangeLog(db, table, lastId);
    const logged = db.prepare(logAllRowsSql(table)).run().changes;
    notes.push({
      level: "warn",
      message: `the key of table "${table.name}" changed under pending changes; logged its ${logged} rows as they are now instead`,
    });
    return true;
  }
  // Dropping a column the log's index does not hold is allowed; the key columns stay.
  for (const column of extra) db.exec(`ALTER TABLE ${quoteIdent(logName)} DROP COLUMN ${quoteIdent(column)}`);
  notes.push({
    level: "info",
    message: `change log of table "${table.name}" now holds only the key of each change; pending changes kept`,
    fields: { dropped_columns: extra.length },
  });
  return true;
}

/** An empty change log made again with the columns `table` needs, its ids going on. */
function rebuildChangeLog(db: Database.Database, table: TableInfo, logName: string): string | undefined {
  const lastId = lastChangeId(db, logName);
  db.exec(`DROP TABLE ${quoteIdent(logName)}`);
  createChangeLog(db, table, lastId);
  return lastId;
}

/**
 * Create a table's change log; its change ids start after `lastId` (the last id of an earlier log of the table),
 * so that no id is handed out twice: a marker row holds it (see keepLastTriggerSql).
 */
function createChangeLog(db: Database.Database, table: TableInfo, lastId: string | undefined): void {
  db.exec(createChangeLogSql(table));
  db.exec(keepLastTriggerSql(table));
  if (lastId !== undefined && lastId !== "0") {
    db.prepare(
      `INSERT INTO ${quoteIdent(changeLogTable(table.name))} (${quoteIdent(LOG_ID_COLUMN)}, ${quoteIdent(LOG_OP_COLUMN)}) VALUES (?, ?)`,
    ).run(BigInt(lastId), LOG_MARKER_OP);
  }
}

/**
 * The highest change id a change log handed out, undefined before the first: its highest row (a change or the
 * marker), or for a log an earlier marmot made with AUTOINCREMENT, its counter if higher.
 */
function lastChangeId(db: Database.Database, logName: string): string | undefined {
  const top = db
    .prepare(`SELECT max(${quoteIdent(LOG_ID_COLUMN)}) FROM ${quoteIdent(logName)}`)
    .pluck(true)
    .get() as bigint | number | null;
  let last = top === null ? undefined : BigInt(top);
  if (tableExists(db, "sqlite_sequence")) {
    const counter = db.prepare("SELECT seq FROM sqlite_sequence WHERE name = ?").pluck(true).get(logName) as bigint | number | undefined;
    if (counter !== undefined && (last === undefined || BigInt(counter) > last)) last = BigInt(counter);
  }
  return last === undefined ? undefined : String(last);
}

/** A change log made by an earlier marmot, whose ids came from AUTOINCREMENT. */
function isAutoincrementLog(db: Database.Database, logName: string): boolean {
  const sql = db.prepare("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?").pluck(true).get(logName) as string | undefined;
  return /\bAUTOINCREMENT\b/i.test(sql ?? "");
}

/** The marker trigger of a change log without AUTOINCREMENT, (re)created when missing or different. */
function ensureKeepLastTrigger(db: Database.Database, table: TableInfo): boolean {
  const logName = changeLogTable(table.name);
  if (isAutoincrementLog(db, logName)) return false;
  return ensureSchemaObject(db, "trigger", keepLastTriggerName(table.name), keepLastTriggerSql(table));
}

/** Creates an index or trigger, or creates it again when SQLite keeps other SQL for it; true when it did. */
function ensureSchemaObject(db: Database.Database, type: "index" | "trigger", name: string, wanted: string): boolean {
  const row = db.prepare("SELECT sql FROM sqlite_master WHERE type = ? AND name = ?").get(type, name) as { sql: string | null } | undefined;
  if (row?.sql === wanted) return false;
  db.exec(`DROP ${type.toUpperCase()} IF EXISTS ${quoteIdent(name)}`);
  db.exec(wanted);
  return true;
}

function setMeta(db: Database.Database, key: string, value: string): void {
  db.prepare(`INSERT INTO ${quoteIdent(META_TABLE)} (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(
    key,
    value,
  );
}

/** The change log's index on the row key, (re)built when missing or not on the key columns it should be. */
function ensureKeyIndex(db: Database.Database, table: TableInfo): boolean {
  return ensureSchemaObject(db, "index", changeLogIndex(table.name), createChangeLogIndexSql(table));
}

function dropStaleTriggers(db: Database.Database, triggers: Map<string, TriggerRow>, wanted: Set<string>, notes: Note[]): void {
  const guard = quoteIdent(APPLYING_TABLE);
  for (const trigger of triggers.values()) {
    if (wanted.has(trigger.name) || !isCaptureTriggerName(trigger.name) || !(trigger.sql ?? "").includes(guard)) continue;
    db.exec(`DROP TRIGGER IF EXISTS ${quoteIdent(trigger.name)}`);
    notes.push({ level: "info", message: `dropped capture trigger "${trigger.name}" of table "${trigger.tbl_name}", which is no longer captured` });
  }
}

/** Change logs of tables that were dropped or excluded: dropped when empty, kept (and reported) while they hold changes. */
function dropStaleChangeLogs(db: Database.Database, captured: Set<string>, notes: Note[]): void {
  const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[];
  for (const { name } of tables) {
    const owner = changeLogOwner(name);
    if (owner === undefined || captured.has(owner)) continue;
    const pending = Number((db.prepare(`SELECT count(*) AS n FROM ${quoteIdent(name)} WHERE ${NOT_MARKER}`).get() as { n: bigint | number }).n);
    if (pending === 0) {
      const lastId = lastChangeId(db, name);
      if (lastId !== undefined) setMeta(db, lastChangeIdKey(owner), lastId);
      db.exec(`DROP TABLE ${quoteIdent(name)}`);
      db.prepare(`DELETE FROM ${quoteIdent(META_TABLE)} WHERE key = ?`).run(captureSignatureKey(owner));
      notes.push({ level: "info", message: `dropped the empty change log of table "${owner}", which is no longer captured` });
    } else {
      notes.push({
        level: "warn",
        message: `table "${owner}" is no longer captured but its change log "${name}" still holds ${pending} unpublished changes; keeping it`,
      });
    }
  }
}

interface Signature {
  columns: { name: string }[];
}

function signatureOf(table: TableInfo): string {
  return JSON.stringify({
    columns: table.columns,
    keyColumns: table.keyColumns,
    rowidKeyed: table.rowidKeyed,
    withoutRowid: table.withoutRowid,
  });
}

function parseSignature(text: string | undefined): Signature | undefined {
  if (text === undefined) return undefined;
  try {
    const parsed = JSON.parse(text) as Partial<Signature>;
    return Array.isArray(parsed.columns) ? (parsed as Signature) : undefined;
  } catch {
    return undefined;
  }
}

function metaValue(db: Database.Database, key: string): string | undefined {
  const row = db.prepare(`SELECT value FROM ${quoteIdent(META_TABLE)} WHERE key = ?`).get(key) as { value: unknown } | undefined;
  return row === undefined ? undefined : String(row.value);
}

function columnNames(db: Database.Database, table: string): string[] {
  return (db.prepare("SELECT name FROM pragma_table_info(?, 'main')").all(table) as { name: string }[]).map((row) => row.name);
}

/** Whether a change log holds changes (marker rows are not changes). */
function hasPendingRows(db: Database.Database, logName: string): boolean {
  return db.prepare(`SELECT 1 FROM ${quoteIdent(logName)} WHERE ${NOT_MARKER} LIMIT 1`).get() !== undefined;
}

/** Whether marmot's own apply (or restore) transaction holds its row in APPLYING_TABLE. */
function marmotApplying(db: Database.Database): boolean {
  return db.prepare(`SELECT 1 FROM ${quoteIdent(APPLYING_TABLE)} LIMIT 1`).get() !== undefined;
}

export function tableExists(db: Database.Database, name: string): boolean {
  return db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(name) !== undefined;
}
