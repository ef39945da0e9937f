// Removes everything marmot added to a database, leaving the user's tables and rows exactly as they are.

import type Database from "better-sqlite3";
import type { Logger } from "../log.js";
import { APPLYING_TABLE, isCaptureTriggerName, isMarmotTable, META_SEQUENCE_KEY, META_TABLE } from "./names.js";
import { quoteIdent } from "./quote.js";
import { restoreUserTriggers } from "./user-triggers.js";

export interface CleanupResult {
  triggers: string[];
  tables: string[];
  /** true when sqlite_sequence was dropped because only marmot's tables had needed it */
  droppedSequence: boolean;
  /** sqlite_sequence rows of the app's tables whose rowid was put back to what it would be without marmot */
  renumberedSequenceRows: number;
  /** the app's triggers whose own text was put back (marmot had guarded them) */
  userTriggers: string[];
}

/** Drop marmot's triggers, change logs and internal tables in one transaction. Pending changes are discarded. */
export function removeCapture(db: Database.Database, logger: Logger): CleanupResult {
  const remove = db.transaction((): CleanupResult => {
    const sequenceBefore = metaValue(db, META_SEQUENCE_KEY);
    const objects = db.prepare("SELECT type, name, sql FROM sqlite_master WHERE type IN ('table', 'trigger')").all() as {
      type: string;
      name: string;
      sql: string | null;
    }[];
    const guard = quoteIdent(APPLYING_TABLE);
    const triggers = objects
      .filter((row) => row.type === "trigger" && isCaptureTriggerName(row.name) && (row.sql ?? "").includes(guard))
      .map((row) => row.name);
    const tables = objects.filter((row) => row.type === "table" && isMarmotTable(row.name)).map((row) => row.name);
    // The app's triggers get their own text back, byte for byte, before the table that keeps it goes.
    const userTriggers = restoreUserTriggers(db);
    for (const name of triggers) db.exec(`DROP TRIGGER IF EXISTS ${quoteIdent(name)}`);
    for (const name of tables) db.exec(`DROP TABLE IF EXISTS ${quoteIdent(name)}`);
    const renumberedSequenceRows = sequenceBefore === undefined ? 0 : renumberSequenceRows(db, sequenceBefore);
    const droppedSequence = sequenceBefore === "absent" && dropUnusedSequenceTable(db);
    return { triggers, tables, droppedSequence, renumberedSequenceRows, userTriggers };
  });
  const result = remove.immediate();
  logger.info(
    `removed marmot from the database: ${result.triggers.length} triggers and ${result.tables.length} tables dropped, ` +
      `${result.userTriggers.length} of the app's triggers given their own text back`,
    { tables: result.tables, app_triggers: result.userTriggers },
  );
  return result;
}

/**
 * SQLite gives each AUTOINCREMENT table its sqlite_sequence row at the next free rowid, so rows the app's tables got
 * while marmot's change logs had rows there sit at higher rowids than they would without marmot. Dropping marmot's
 * tables removed marmot's rows; this closes the gaps they left above the rows that predate marmot, keeping order.
 * (Exact unless the app also dropped AUTOINCREMENT tables while marmot was installed.)
 */
function renumberSequenceRows(db: Database.Database, sequenceBefore: string): number {
  const exists = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'").get();
  if (exists === undefined) return 0;
  const highestBefore = sequenceBefore === "absent" ? 0n : BigInt(sequenceBefore);
  const later = db.prepare("SELECT rowid AS id FROM sqlite_sequence WHERE rowid > ? ORDER BY rowid").all(highestBefore) as { id: bigint | number }[];
  const move = db.prepare("UPDATE sqlite_sequence SET rowid = ? WHERE rowid = ?");
  let moved = 0;
  let next = highestBefore + 1n;
  for (const { id } of later) {
    if (BigInt(id) !== next) {
      move.run(next, BigInt(id));
      moved += 1;
    }
    next += 1n;
  }
  return moved;
}

/**
 * Marmot's AUTOINCREMENT tables make SQLite create sqlite_sequence, which SQLite refuses to drop. When marmot
 * caused it, it is empty and no user table declares AUTOINCREMENT, it is renamed in the schema table to a plain
 * name and dropped like any table, so its page is freed and the file holds nothing marmot added.
 */
function dropUnusedSequenceTable(db: Database.Database): boolean {
  const sequence = db.prepare("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'").get();
  if (sequence === undefined) return false;
  if (db.prepare("SELECT 1 FROM sqlite_sequence LIMIT 1").get() !== undefined) return false;
  const userAutoincrement = db
    .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name <> 'sqlite_sequence' AND sql LIKE '%AUTOINCREMENT%' LIMIT 1")
    .get();
  if (userAutoincrement !== undefined) return false;

  const temporaryName = `${META_TABLE}_sequence_removal`;
  db.unsafeMode(true);
  try {
    db.pragma("writable_schema = ON");
    db.prepare("UPDATE sqlite_master SET name = ?, tbl_name = ?, sql = ? WHERE type = 'table' AND name = 'sqlite_sequence'").run(
      temporaryName,
      temporaryName,
      `CREATE TABLE ${quoteIdent(temporaryName)}(name,seq)`,
    );
  } finally {
    // RESET turns writable_schema off and reloads the schema, so the renamed table can be dropped normally.
    db.pragma("writable_schema = RESET");
    db.unsafeMode(false);
  }
  db.exec(`DROP TABLE ${quoteIdent(temporaryName)}`);
  return true;
}

function metaValue(db: Database.Database, key: string): string | undefined {
  const exists = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(META_TABLE);
  if (exists === undefined) return undefined;
  const row = db.prepare(`SELECT value FROM ${quoteIdent(META_TABLE)} WHERE key = ?`).get(key) as { value: unknown } | undefined;
  return row === undefined ? undefined : String(row.value);
}
