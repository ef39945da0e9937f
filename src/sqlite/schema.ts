// Reads the user's schema: which tables marmot captures, their columns and keys, and which it skips and why.

import type Database from "better-sqlite3";
import { SchemaError } from "../errors.js";
import { INTERNAL_PREFIX, isMarmotTable, ROWID_KEY } from "./names.js";
import type { ColumnInfo, TableInfo } from "./table.js";

export interface SkippedTable {
  name: string;
  reason: string;
}

export interface UserSchema {
  /** tables to capture, sorted by name */
  tables: TableInfo[];
  /** tables marmot leaves alone, each with the reason (marmot's own and sqlite_* tables are not listed) */
  skipped: SkippedTable[];
}

/** Which user tables to capture; names compare case-insensitively, as SQLite compares them. */
export interface TableFilter {
  /** when given and not empty, only these tables */
  include?: readonly string[];
  /** never these tables */
  exclude?: readonly string[];
}

interface TableListRow {
  schema: string;
  name: string;
  type: string;
  wr: number | bigint;
}

interface XInfoRow {
  name: string;
  type: string;
  notnull: number | bigint;
  pk: number | bigint;
  hidden: number | bigint;
}

/** The names by which SQLite lets a statement reach a rowid table's rowid, in order of preference. */
const ROWID_ALIASES = ["rowid", "_rowid_", "oid"] as const;

/** `PRAGMA schema_version`: changes whenever any connection changes the schema. */
export function schemaVersion(db: Database.Database): number {
  return Number(db.pragma("schema_version", { simple: true }));
}

/**
 * The tables of schema "main" that marmot can capture. Throws SchemaError for a user table that uses marmot's
 * reserved prefix, and for a rowid table whose columns shadow every name of its rowid.
 */
export function readSchema(db: Database.Database, filter: TableFilter = {}): UserSchema {
  const listed = db.prepare("SELECT schema, name, type, wr FROM pragma_table_list WHERE schema = 'main'").all() as TableListRow[];
  listed.sort((a, b) => compareNames(a.name, b.name));

  const reserved = listed.find((row) => foldCase(row.name).startsWith(INTERNAL_PREFIX) && !isMarmotTable(row.name));
  if (reserved !== undefined) {
    throw new SchemaError(`table "${reserved.name}" uses marmot's reserved prefix "${INTERNAL_PREFIX}": rename it; marmot cannot capture it`);
  }

  const include = new Set((filter.include ?? []).map(foldCase));
  const exclude = new Set((filter.exclude ?? []).map(foldCase));
  const tables: TableInfo[] = [];
  const skipped: SkippedTable[] = [];
  for (const row of listed) {
    if (isMarmotTable(row.name) || foldCase(row.name).startsWith("sqlite_")) continue;
    if (row.type === "view") continue;
    if (row.type === "virtual") {
      skipped.push({ name: row.name, reason: `virtual table (${virtualModule(db, row.name)})` });
      continue;
    }
    if (row.type === "shadow") {
      skipped.push({ name: row.name, reason: "shadow table of a virtual table" });
      continue;
    }
    if (row.type !== "table") {
      skipped.push({ name: row.name, reason: `not an ordinary table (${row.type})` });
      continue;
    }
    if (include.size > 0 && !include.has(foldCase(row.name))) {
      skipped.push({ name: row.name, reason: "not in the include list" });
      continue;
    }
    if (exclude.has(foldCase(row.name))) {
      skipped.push({ name: row.name, reason: "in the exclude list" });
      continue;
    }
    tables.push(readTable(db, row.name, Number(row.wr) === 1));
  }
  return { tables, skipped };
}

/** One table's columns and key, as marmot captures it. */
export function readTable(db: Database.Database, name: string, withoutRowid: boolean): TableInfo {
  const rows = db.prepare("SELECT name, type, \"notnull\", pk, hidden FROM pragma_table_xinfo(?, 'main')").all(name) as XInfoRow[];
  if (rows.length === 0) throw new SchemaError(`table "${name}" has no columns or does not exist in schema main`);
  // Hidden and generated columns cannot be written, so they are neither captured nor applied.
  const columns: ColumnInfo[] = rows
    .filter((row) => Number(row.hidden) === 0)
    .map((row) => ({ name: row.name, type: row.type, notNull: Number(row.notnull) !== 0, pkIndex: Number(row.pk) }));
  const keyed = columns.filter((column) => column.pkIndex > 0).sort((a, b) => a.pkIndex - b.pkIndex);
  const uniqueBeyondKey = hasUniqueBeyondKey(db, name);
  const uniqueConstraints = declaredUniqueConstraints(db, name);
  if (keyed.length > 0) {
    return { name, columns, keyColumns: keyed.map((column) => column.name), rowidKeyed: false, withoutRowid, uniqueBeyondKey, uniqueConstraints };
  }
  const table: TableInfo = { name, columns, keyColumns: [ROWID_KEY], rowidKeyed: true, withoutRowid, uniqueBeyondKey, uniqueConstraints };
  // rowidAlias() sees only the captured columns; a hidden or generated column can shadow a rowid name too.
  const alias = findRowidAlias(columns.map((column) => column.name));
  if (alias === undefined || findRowidAlias(rows.map((row) => row.name)) !== alias) {
    throw new SchemaError(
      `table "${name}" has no primary key and its columns named rowid, _rowid_ or oid hide its rowid: ` +
        `marmot cannot identify its rows; add a primary key, rename those columns, or exclude the table`,
    );
  }
  return table;
}

/** Whether a UNIQUE constraint or a unique index (partial or on expressions too) other than the key exists. */
/** The columns of each UNIQUE constraint of CREATE TABLE (origin 'u': plain columns, never partial or on expressions). */
function declaredUniqueConstraints(db: Database.Database, name: string): string[][] {
  const indexes = db
    .prepare("SELECT name FROM pragma_index_list(?, 'main') WHERE \"unique\" = 1 AND origin = 'u' ORDER BY name")
    .pluck(true)
    .all(name) as string[];
  return indexes.map((index) => db.prepare("SELECT name FROM pragma_index_info(?, 'main') ORDER BY seqno").pluck(true).all(index) as string[]);
}

function hasUniqueBeyondKey(db: Database.Database, name: string): boolean {
  const row = db.prepare("SELECT 1 FROM pragma_index_list(?, 'main') WHERE \"unique\" = 1 AND origin <> 'pk' LIMIT 1").get(name);
  return row !== undefined;
}

/**
 * The name that reaches the rowid of a rowid-keyed table in SQL (for a trigger's NEW/OLD or a WHERE clause):
 * "rowid" unless a column of that name hides it, then "_rowid_", then "oid".
 */
export function rowidAlias(table: TableInfo): string {
  const alias = findRowidAlias(table.columns.map((column) => column.name));
  if (alias === undefined) throw new SchemaError(`table "${table.name}" has columns hiding every name of its rowid`);
  return alias;
}

function findRowidAlias(columnNames: readonly string[]): string | undefined {
  const taken = new Set(columnNames.map(foldCase));
  return ROWID_ALIASES.find((alias) => !taken.has(alias));
}

function virtualModule(db: Database.Database, name: string): string {
  const row = db.prepare("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?").get(name) as { sql: string | null } | undefined;
  const match = /\bUSING\s+["'`[]?([A-Za-z0-9_]+)/i.exec(row?.sql ?? "");
  return match?.[1]?.toLowerCase() ?? "unknown module";
}

/** SQLite folds only ASCII letters when it compares names. */
export function foldCase(name: string): string {
  return name.replace(/[A-Z]+/g, (letters) => letters.toLowerCase());
}

function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
