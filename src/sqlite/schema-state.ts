// The user schema as marmot replicates it: which objects of sqlite_schema travel, the state this node last
// published or applied (SCHEMA_TABLE), and the difference between the two.

import type Database from "better-sqlite3";
import type { SchemaChange, SchemaObjectType } from "../wire/schema-message.js";
import { isInternalName, SCHEMA_OUTBOX_TABLE, SCHEMA_TABLE, USER_TRIGGERS_TABLE } from "./names.js";
import { quoteIdent } from "./quote.js";
import { foldCase, type TableFilter } from "./schema.js";

/** One user object of sqlite_schema, with whether it travels to other nodes. */
export interface SchemaObject extends SchemaChange {
  sql: string;
  /** false for objects of tables `[tables]` leaves out: their changes stay on this node */
  travels: boolean;
}

/**
 * The app's text of each trigger marmot guards (see user-triggers.ts), by its guarded text: what travels is the
 * app's text, and a node guards what it creates from it.
 */
export function appTriggerTexts(db: Database.Database): Map<string, string> {
  const exists = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(USER_TRIGGERS_TABLE) !== undefined;
  if (!exists) return new Map();
  const rows = db.prepare(`SELECT sql, guarded FROM ${quoteIdent(USER_TRIGGERS_TABLE)}`).all() as { sql: string; guarded: string }[];
  return new Map(rows.map((row) => [row.guarded, row.sql]));
}

export function objectKey(type: string, name: string): string {
  return `${type}:${foldCase(name)}`;
}

const SCHEMA_TABLES_SQL = [
  `CREATE TABLE IF NOT EXISTS ${quoteIdent(SCHEMA_TABLE)} (k TEXT PRIMARY KEY, type TEXT NOT NULL, name TEXT NOT NULL, tbl_name TEXT NOT NULL, sql TEXT)`,
  `CREATE TABLE IF NOT EXISTS ${quoteIdent(SCHEMA_OUTBOX_TABLE)} (id INTEGER PRIMARY KEY, keys TEXT NOT NULL, payload BLOB NOT NULL, published_seq INTEGER)`,
];

/**
 * Creates marmot's schema tables when missing. Returns true when SCHEMA_TABLE was just created: the caller then
 * records the current schema as the starting point (see recordSchemaState), so that what a database held before
 * marmot managed it does not travel as a change.
 */
export function ensureSchemaTables(db: Database.Database): boolean {
  const existed = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(SCHEMA_TABLE) !== undefined;
  for (const sql of SCHEMA_TABLES_SQL) db.exec(sql);
  return !existed;
}

/** Whether changes of objects of table `tblName` travel under `filter` (names compare as SQLite compares them). */
export function tableTravels(tblName: string, filter: TableFilter): boolean {
  const name = foldCase(tblName);
  const include = (filter.include ?? []).map(foldCase);
  if (include.length > 0 && !include.includes(name)) return false;
  return !(filter.exclude ?? []).map(foldCase).includes(name);
}

/**
 * The user objects of schema main in creation order: tables (virtual ones included), indexes, views and triggers.
 * Left out: marmot's own objects, SQLite's (sqlite_*, automatic indexes, which have no SQL), and the shadow tables
 * of virtual tables, which their module creates with the virtual table.
 */
export function readSchemaState(db: Database.Database, filter: TableFilter): SchemaObject[] {
  const rows = db.prepare("SELECT type, name, tbl_name AS tblName, sql FROM main.sqlite_master WHERE sql IS NOT NULL ORDER BY rowid").all() as {
    type: SchemaObjectType;
    name: string;
    tblName: string;
    sql: string;
  }[];
  const listed = db.prepare("SELECT name, type FROM pragma_table_list WHERE schema = 'main'").all() as { name: string; type: string }[];
  const shadow = new Set(listed.filter((t) => t.type === "shadow").map((t) => foldCase(t.name)));
  const views = new Set(listed.filter((t) => t.type === "view").map((t) => foldCase(t.name)));
  const appText = appTriggerTexts(db);
  const out: SchemaObject[] = [];
  for (const row of rows) {
    if (isInternalName(row.name) || isInternalName(row.tblName) || foldCase(row.name).startsWith("sqlite_")) continue;
    if (shadow.has(foldCase(row.tblName))) continue;
    const sql = row.type === "trigger" ? (appText.get(row.sql) ?? row.sql) : row.sql;
    const travels = views.has(foldCase(row.tblName)) || tableTravels(row.tblName, filter);
    out.push({ type: row.type, name: row.name, tblName: row.tblName, sql, travels });
  }
  return out;
}

/** The recorded state: key -> object. */
export function storedSchemaState(db: Database.Database): Map<string, SchemaChange> {
  const rows = db.prepare(`SELECT k, type, name, tbl_name AS tblName, sql FROM ${quoteIdent(SCHEMA_TABLE)}`).all() as (SchemaChange & {
    k: string;
  })[];
  return new Map(rows.map(({ k, ...object }) => [k, object]));
}

/**
 * What changed since the recorded state: objects that travel and are new or defined otherwise, and recorded
 * objects that are gone from the file altogether (an object a changed `[tables]` now leaves out is not "dropped").
 */
export function diffSchemaState(stored: Map<string, SchemaChange>, current: readonly SchemaObject[]): SchemaChange[] {
  const changes: SchemaChange[] = [];
  const present = new Set<string>();
  for (const object of current) {
    const key = objectKey(object.type, object.name);
    present.add(key);
    if (!object.travels) continue;
    const before = stored.get(key);
    if (before?.sql !== object.sql) changes.push({ type: object.type, name: object.name, tblName: object.tblName, sql: object.sql });
  }
  for (const [key, before] of stored) {
    if (!present.has(key) && before.sql !== null) changes.push({ ...before, sql: null });
  }
  return changes;
}

/** Record `current` as the state this node has published or applied. */
export function recordSchemaState(db: Database.Database, current: readonly SchemaObject[]): void {
  db.prepare(`DELETE FROM ${quoteIdent(SCHEMA_TABLE)}`).run();
  const insert = db.prepare(`INSERT OR REPLACE INTO ${quoteIdent(SCHEMA_TABLE)} (k, type, name, tbl_name, sql) VALUES (?, ?, ?, ?, ?)`);
  for (const object of current) {
    if (object.travels) insert.run(objectKey(object.type, object.name), object.type, object.name, object.tblName, object.sql);
  }
}

/**
 * After a snapshot restore: the restored schema is the recorded state (it is what the snapshot's sequence of the
 * schema stream covers), and this node's unsent schema changes went with the schema they changed.
 */
export function resetSchemaState(db: Database.Database, filter: TableFilter): void {
  ensureSchemaTables(db);
  recordSchemaState(db, readSchemaState(db, filter));
  db.prepare(`DELETE FROM ${quoteIdent(SCHEMA_OUTBOX_TABLE)}`).run();
}
