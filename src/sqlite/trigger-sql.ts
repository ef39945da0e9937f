// Generates the DDL of a captured table's change log and capture triggers; pure text, built only from the local schema.

import {
  APPLYING_TABLE,
  changeLogIndex,
  changeLogTable,
  clashTriggerName,
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

/**
 * Every column of the table's change log, in order: the change id, the op and the row's key. No other value is
 * logged: the shipper reads the row as it is when it ships (see ChangeLogReader), so a trigger never names a column
 * that ALTER TABLE can drop or that a write between ADD COLUMN and marmot's next look would leave out.
 */
export function changeLogColumns(table: TableInfo): string[] {
  return [LOG_ID_COLUMN, LOG_OP_COLUMN, ...changeLogKeyColumns(table)];
}

/**
 * The change log: key columns have no declared type, so every key keeps its exact storage class (a REAL stays
 * REAL, a 64-bit INTEGER stays exact, a BLOB stays a BLOB). Its ids keep growing after the rows with the highest ids
 * were published and deleted: keepLastTriggerSql() leaves a marker row with the highest id.
 */
export function createChangeLogSql(table: TableInfo): string {
  const definitions = [
    `${quoteIdent(LOG_ID_COLUMN)} INTEGER PRIMARY KEY`,
    `${quoteIdent(LOG_OP_COLUMN)} TEXT NOT NULL`,
    ...changeLogKeyColumns(table).map(quoteIdent),
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

/**
 * The three AFTER triggers that log each row change of `table` (its op and key) into its change log, and for a
 * table with UNIQUE constraints the BEFORE triggers of clashTriggers().
 */
export function captureTriggers(table: TableInfo): TriggerDefinition[] {
  return [
    { name: triggerName(table.name, "insert"), op: "insert", sql: triggerSql(table, "insert", [logKeySql(table, OP_UPSERT, "NEW")]) },
    { name: triggerName(table.name, "update"), op: "update", sql: updateTriggerSql(table) },
    { name: triggerName(table.name, "delete"), op: "delete", sql: triggerSql(table, "delete", [logKeySql(table, OP_DELETE, "OLD")]) },
    ...clashTriggers(table),
  ];
}

/**
 * An INSERT or UPDATE OR REPLACE that clashes on a UNIQUE value removes the other row, and no trigger sees that
 * removal. Before the write, these log the key of every row the new values clash with; the shipper then finds
 * that row gone and sends its delete, in the app's order. They name only columns of UNIQUE constraints declared in
 * CREATE TABLE, which SQLite never lets ALTER TABLE drop (a rename rewrites the trigger). A UNIQUE index made with
 * CREATE UNIQUE INDEX can be dropped and its column then too, so it gets no such trigger.
 */
function clashTriggers(table: TableInfo): TriggerDefinition[] {
  const constraints = table.uniqueConstraints ?? [];
  if (constraints.length === 0) return [];
  const clash = constraints.map((columns) => `(${columns.map((c) => `o.${quoteIdent(c)} = NEW.${quoteIdent(c)}`).join(" AND ")})`).join(" OR ");
  // Not the row being written itself (its own AFTER trigger logs it).
  const statement = (self: "NEW" | "OLD") =>
    `INSERT INTO ${quoteIdent(changeLogTable(table.name))} (${logColumnList(table)}) ` +
    `SELECT ${[quoteLiteral(OP_UPSERT), ...keyReferences(table).map((key) => `o.${key}`)].join(", ")} FROM ${quoteIdent(table.name)} AS o ` +
    `WHERE (${clash}) AND NOT (${keyReferences(table)
      .map((key) => `o.${key} IS ${self}.${key}`)
      .join(" AND ")});`;
  return (["insert", "update"] as const).map((op) => ({
    name: clashTriggerName(table.name, op),
    op,
    sql:
      `CREATE TRIGGER ${quoteIdent(clashTriggerName(table.name, op))} BEFORE ${op.toUpperCase()} ON ${quoteIdent(table.name)} ` +
      `FOR EACH ROW ${GUARD}\nBEGIN\n  ${statement(op === "insert" ? "NEW" : "OLD")}\nEND`,
  }));
}

/** A key change is a delete of the old key followed by an upsert of the new row, so replicas drop the old row. */
function updateTriggerSql(table: TableInfo): string {
  const keyChanged = keyReferences(table)
    .map((key) => `OLD.${key} IS NOT NEW.${key}`)
    .join(" OR ");
  const deleteOld =
    `INSERT INTO ${quoteIdent(changeLogTable(table.name))} (${logColumnList(table)}) ` +
    `SELECT ${[quoteLiteral(OP_DELETE), ...keyReferences(table).map((key) => `OLD.${key}`)].join(", ")} WHERE ${keyChanged};`;
  return triggerSql(table, "update", [deleteOld, logKeySql(table, OP_UPSERT, "NEW")]);
}

function triggerSql(table: TableInfo, op: TriggerOp, statements: string[]): string {
  return (
    `CREATE TRIGGER ${quoteIdent(triggerName(table.name, op))} AFTER ${op.toUpperCase()} ON ${quoteIdent(table.name)} ` +
    `FOR EACH ROW ${GUARD}\nBEGIN\n${statements.map((statement) => `  ${statement}\n`).join("")}END`
  );
}

/** INSERT INTO <log> (op, key...) VALUES ('<op>', <row>.<key>...); */
function logKeySql(table: TableInfo, op: string, row: "NEW" | "OLD"): string {
  const values = [quoteLiteral(op), ...keyReferences(table).map((key) => `${row}.${key}`)];
  return `INSERT INTO ${quoteIdent(changeLogTable(table.name))} (${logColumnList(table)}) VALUES (${values.join(", ")});`;
}

/** The log columns a trigger fills: the op and the key. */
function logColumnList(table: TableInfo): string {
  return [LOG_OP_COLUMN, ...changeLogKeyColumns(table)].map(quoteIdent).join(", ");
}

/** The quoted names that reach the key of a row (to be prefixed with OLD., NEW. or a table alias). */
export function keyReferences(table: TableInfo): string[] {
  return table.rowidKeyed ? [quoteIdent(rowidAlias(table))] : table.keyColumns.map(quoteIdent);
}

/**
 * Log every row of a table as an upsert: for a table that appeared while marmot runs (or was made again under a
 * captured name), the rows the app wrote before its triggers existed are writes like any other and must travel too.
 */
export function logAllRowsSql(table: TableInfo): string {
  return (
    `INSERT INTO ${quoteIdent(changeLogTable(table.name))} (${logColumnList(table)}) ` +
    `SELECT ${[quoteLiteral(OP_UPSERT), ...keyReferences(table)].join(", ")} FROM ${quoteIdent(table.name)}`
  );
}
