// Opens marmot's own connection to the user's database with the settings replication depends on.

import Database from "better-sqlite3";
import { SchemaError } from "../errors.js";
import type { Logger } from "../log.js";

/**
 * How long a statement waits for the app's write lock before failing with SQLITE_BUSY, while opening (switching to
 * WAL) and in the one-shot commands. A running node then fails fast and retries without blocking (see busy.ts).
 */
export const BUSY_TIMEOUT_MS = 10_000;

/**
 * How marmot's running node commits: `synchronous = NORMAL`, so its commits (applied changes, shipped changes leaving
 * the change log) do not wait for an fsync of the WAL; the app's connection keeps its own setting. In WAL mode that
 * never corrupts the file; a power loss can only take back marmot's last commits, and each is redone from what stays
 * durable elsewhere: an applied change is recorded with its stream sequence in the same transaction, so the next
 * start applies it again from the stream; a change taken back into the change log is found in the stream before it
 * is shipped again (Node.catchUpBeforeShipping). One fsync fewer on every node for every message.
 */
export const REPLICATION_SYNCHRONOUS = "NORMAL";

/**
 * Open `path` for marmot: every INTEGER comes back as a bigint (bind integers as bigint too: a JS number binds
 * as REAL), foreign keys are off (cascades already happened at the origin and were captured there), and the
 * file is in WAL mode so the app's readers and marmot's writer do not block each other. A running node passes
 * `replicating` (see REPLICATION_SYNCHRONOUS); the one-shot commands keep SQLite's durable default.
 */
export function openDatabase(path: string, logger: Logger, options: { replicating?: boolean } = {}): Database.Database {
  let db: Database.Database;
  try {
    db = new Database(path, { timeout: BUSY_TIMEOUT_MS });
  } catch (err) {
    throw new SchemaError(
      `cannot open database ${path}: ${errorMessage(err)}; check db_path and that marmot may read and write the file and its directory`,
      { cause: err },
    );
  }
  try {
    db.defaultSafeIntegers(true);
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    // Reads the header and the schema: a file that is not a database fails here rather than at first capture.
    db.prepare("SELECT count(*) FROM sqlite_master").get();
    db.pragma("foreign_keys = OFF");
    ensureWal(db, path, logger);
    if (options.replicating) db.pragma(`synchronous = ${REPLICATION_SYNCHRONOUS}`);
    return db;
  } catch (err) {
    db.close();
    if (err instanceof SchemaError) throw err;
    const code = (err as { code?: unknown }).code;
    if (code === "SQLITE_NOTADB" || code === "SQLITE_CORRUPT") {
      throw new SchemaError(`${path} is not a usable SQLite database (${errorMessage(err)}); check db_path points at the app's database file`, {
        cause: err,
      });
    }
    throw err;
  }
}

function ensureWal(db: Database.Database, path: string, logger: Logger): void {
  const before = String(db.pragma("journal_mode", { simple: true })).toLowerCase();
  if (before === "wal") return;
  const after = String(db.pragma("journal_mode = WAL", { simple: true })).toLowerCase();
  if (after !== "wal") {
    throw new SchemaError(
      `could not switch ${path} to WAL journal mode (it stays in ${after} mode); stop other processes holding the database open and retry`,
    );
  }
  logger.info(`switched ${path} to WAL journal mode (was ${before})`);
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
