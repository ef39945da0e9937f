// Generates the DDL of a captured table's change log and capture triggers; pure text, built only from the local schema.

import {
  APPLYING_TABLE,
  changeLogIndex,
  changeLogTable,
  keepLastTriggerName,
  LOG_ID_COLUMN,
  LOG_MARKER_OP,
  LOG_OP_COLUMN,
  LOG_ROWID_COLUMN,
  logValueColumn,
  OP_DELETE,
  OP_UPSERT,
  triggerName,
} from "./names.js";
import { quoteIdent, quoteLiteral } from "./quote.js";
import { rowidAlias } from "./schema.js";
import type { TableInfo } from "./table.js";

export type TriggerOp = "insert" | "update" | "delete";

export interface TriggerDefinition {
  name: string;
  op: TriggerOp;
  /** the full CREATE TRIGGER statement, exactly as SQLite keeps it in sqlite_master */
  sql: string;
}

/** The loop guard: marmot's apply transactions hold a row in APPLYING_TABLE, which no other connection ever sees. */
const GUARD = `WHEN NOT EXISTS (SELECT 1 FROM ${quoteIdent(APPLYING_TABLE)})`;

/** Every column of the table's change log, in order. */
export function changeLogColumns(table: TableInfo): string[] {
  const columns = [LOG_ID_COLUMN, LOG_OP_COLUMN];
  if (table.rowidKeyed) columns.push(LOG_ROWID_COLUMN);
  for (const column of table.columns) columns.push(logValueColumn(column.name));
  return columns;
}

/**
 * The change log: value columns have no declared type, so every value keeps its exact storage class
 * (a REAL stays REAL, a 64-bit INTEGER stays exact, a BLOB stays a BLOB). Its ids keep growing after the rows with
 * the highest ids were published and deleted: keepLastTriggerSql() leaves a marker row with the highest id.
 */
export function createChangeLogSql(table: TableInfo): string {
  const definitions = [
    `${quoteIdent(LOG_ID_COLUMN)} INTEGER PRIMARY KEY`,
    `${quoteIdent(LOG_OP_COLUMN)} TEXT NOT NULL`,
    ...changeLogColumns(table).slice(2).map(quoteIdent),
  ];
  return `CREATE TABLE ${quoteIdent(changeLogTable(table.name))} (${definitions.join(", ")})`;
}

/**
 * Whenever the row with the highest id leaves the log (published, or taken out when it came back from the stream),
 * a marker row takes its id, so SQLite's next id is above it. Cheaper than AUTOINCREMENT, which rewrites
 * sqlite_sequence on every insert, in the app's transaction; this runs only when marmot deletes.
 */
export function keepLastTriggerSql(table: TableInfo): string {
  const log = quoteIdent(changeLogTable(table.name));
  const id = quoteIdent(LOG_ID_COLUMN);
  return (
    `CREATE TRIGGER ${quoteIdent(keepLastTriggerName(table.name))} AFTER DELETE ON ${log} ` +
    `FOR EACH ROW WHEN NOT EXISTS (SELECT 1 FROM ${log} WHERE ${id} >= OLD.${id})\n` +
    `BEGIN\n  INSERT INTO ${log} (${id}, ${quoteIdent(LOG_OP_COLUMN)}) VALUES (OLD.${id}, ${quoteLiteral(LOG_MARKER_OP)});\nEND`
  );
}

/** The SQL condition that leaves out marker rows: every reader of a change log wants changes only. */
export const NOT_MARKER = `${quoteIdent(LOG_OP_COLUMN)} <> ${quoteLiteral(LOG_MARKER_OP)}`;

/** The change-log columns that hold a row's key, in key order. */
export function changeLogKeyColumns(table: TableInfo): string[] {
  return table.rowidKeyed ? [LOG_ROWID_COLUMN] : table.keyColumns.map(logValueColumn);
}

/** The index on a change log's key columns (each index entry also holds the change id, so max() is one seek). */
export function createChangeLogIndexSql(table: TableInfo): string {
  return `CREATE INDEX ${quoteIdent(changeLogIndex(table.name))} ON ${quoteIdent(changeLogTable(table.name))} (${changeLogKeyColumns(table).map(quoteIdent).join(", ")})`;
}

/** The ALTER that gives an existing change log a column it lacks (value columns and the rowid column are untyped). */
export function addChangeLogColumnSql(table: TableInfo, column: string): string {
  return `ALTER TABLE ${quoteIdent(changeLogTable(table.name))} ADD COLUMN ${quoteIdent(column)}`;
}

/** The three AFTER triggers that copy each row change of `table` into its change log. */
export function captureTriggers(table: TableInfo): TriggerDefinition[] {
  return [
    { name: triggerName(table.name, "insert"), op: "insert", sql: insertTriggerSql(table) },
    { name: triggerName(table.name, "update"), op: "update", sql: updateTriggerSql(table) },
    { name: triggerName(table.name, "delete"), op: "delete", sql: deleteTriggerSql(table) },
  ];
}

function insertTriggerSql(table: TableInfo): string {
  return triggerSql(table, "insert", [`${upsertStatement(table)};`]);
}

/** A key change is a delete of the old key followed by an upsert of the new row, so replicas drop the old row. */
function updateTriggerSql(table: TableInfo): string {
  const keyExpressions = keyReferences(table);
  const keyChanged = keyExpressions.map((key) => `OLD.${key} IS NOT NEW.${key}`).join(" OR ");
  const deleteOld =
    `INSERT INTO ${quoteIdent(changeLogTable(table.name))} (${deleteColumns(table).join(", ")}) ` +
    `SELECT ${[quoteLiteral(OP_DELETE), ...keyExpressions.map((key) => `OLD.${key}`)].join(", ")} WHERE ${keyChanged};`;
  return triggerSql(table, "update", [deleteOld, `${upsertStatement(table)};`]);
}

function deleteTriggerSql(table: TableInfo): string {
  const values = [quoteLiteral(OP_DELETE), ...keyReferences(table).map((key) => `OLD.${key}`)];
  const statement =
    `INSERT INTO ${quoteIdent(changeLogTable(table.name))} (${deleteColumns(table).join(", ")}) ` +
    `VALUES (${values.join(", ")});`;
  return triggerSql(table, "delete", [statement]);
}

function triggerSql(table: TableInfo, op: TriggerOp, statements: string[]): string {
  return (
    `CREATE TRIGGER ${quoteIdent(triggerName(table.name, op))} AFTER ${op.toUpperCase()} ON ${quoteIdent(table.name)} ` +
    `FOR EACH ROW ${GUARD}\nBEGIN\n${statements.map((statement) => `  ${statement}\n`).join("")}END`
  );
}

/** ('upsert', [NEW.rowid,] NEW.<every column>) */
function upsertStatement(table: TableInfo): string {
  const columns = changeLogColumns(table).slice(1).map(quoteIdent);
  const values = [quoteLiteral(OP_UPSERT)];
  if (table.rowidKeyed) values.push(`NEW.${quoteIdent(rowidAlias(table))}`);
  for (const column of table.columns) values.push(`NEW.${quoteIdent(column.name)}`);
  return `INSERT INTO ${quoteIdent(changeLogTable(table.name))} (${columns.join(", ")}) VALUES (${values.join(", ")})`;
}

/** The log columns a delete fills: the op and the key; every other value column stays NULL. */
function deleteColumns(table: TableInfo): string[] {
  return [LOG_OP_COLUMN, ...changeLogKeyColumns(table)].map(quoteIdent);
}

/** The quoted names that reach the key of a row (to be prefixed with OLD. or NEW.). */
function keyReferences(table: TableInfo): string[] {
  return table.rowidKeyed ? [quoteIdent(rowidAlias(table))] : table.keyColumns.map(quoteIdent);
}

/**
 * Append an upsert of the current state of every row that has changes pending in the log, in order of each row's
 * first pending change. Used when the log's columns change under pending rows: those were logged without the new
 * columns, and the re-logged state makes replicas end with the row as it is now.
 */
export function relogPendingRowsSql(table: TableInfo): string {
  const log = quoteIdent(changeLogTable(table.name));
  const logKeys = changeLogKeyColumns(table);
  const tableKeys = keyReferences(table);
  const columns = changeLogColumns(table).slice(1).map(quoteIdent);
  const values = [quoteLiteral(OP_UPSERT)];
  if (table.rowidKeyed) values.push(`t.${quoteIdent(rowidAlias(table))}`);
  for (const column of table.columns) values.push(`t.${quoteIdent(column.name)}`);
  const pendingKeys = logKeys.map(quoteIdent).join(", ");
  const join = logKeys.map((key, i) => `t.${tableKeys[i]!} = p.${quoteIdent(key)}`).join(" AND ");
  return (
    `INSERT INTO ${log} (${columns.join(", ")}) SELECT ${values.join(", ")} ` +
    `FROM (SELECT ${pendingKeys}, min(${quoteIdent(LOG_ID_COLUMN)}) AS first_change FROM ${log} WHERE ${NOT_MARKER} GROUP BY ${pendingKeys}) AS p ` +
    `JOIN ${quoteIdent(table.name)} AS t ON ${join} ORDER BY p.first_change`
  );
}

/**
 * Log every row of a table as an upsert: for a table that appeared while marmot runs, the rows the app wrote
 * before its triggers existed are writes like any other and must travel too.
 */
export function logAllRowsSql(table: TableInfo): string {
  const log = quoteIdent(changeLogTable(table.name));
  const columns = changeLogColumns(table).slice(1).map(quoteIdent);
  const values = [quoteLiteral(OP_UPSERT)];
  if (table.rowidKeyed) values.push(quoteIdent(rowidAlias(table)));
  for (const column of table.columns) values.push(quoteIdent(column.name));
  return `INSERT INTO ${log} (${columns.join(", ")}) SELECT ${values.join(", ")} FROM ${quoteIdent(table.name)}`;
}
