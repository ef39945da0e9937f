// Restores a snapshot file into the live database: one write transaction on marmot's connection, so the app, which
// may keep the file open and go on reading and writing, sees the database as it was before or as it is after.

import type Database from "better-sqlite3";
import type { Config } from "../config/types.js";
import { SnapshotInvalidError } from "../errors.js";
import type { Logger } from "../log.js";
import type { Metrics } from "../metrics.js";
import { installCapture, tableExists } from "../sqlite/capture.js";
import { APPLIED_TABLE, APPLYING_TABLE, PARKED_TABLE } from "../sqlite/names.js";
import { quoteIdent } from "../sqlite/quote.js";
import { resetSchemaState } from "../sqlite/schema-state.js";
import { factsConfigMismatch, readSnapshotFacts } from "./facts.js";
import { copyTableRows, readPendingRows, reapplyPendingChanges, syncSchema } from "./restore-schema.js";

export interface RestoreOptions {
  config: Config;
  logger: Logger;
  metrics?: Metrics;
}

export interface RestoreResult {
  /** stream -> sequence the database now holds everything up to (apply from the next one) */
  streams: Record<string, number>;
  tables: number;
  rows: number;
  durationMs: number;
}

const SNAPSHOT_SCHEMA = "marmot_snapshot";

/**
 * Make the user schema and rows of `db` equal to the snapshot's, keep this node's own pending changes on top, install
 * capture for the restored schema and record the sequences the snapshot covers, all in one transaction. On any
 * error (a full disk included) the transaction rolls back and the database is as it was.
 */
export function restoreSnapshot(db: Database.Database, snapshotFile: string, options: RestoreOptions): RestoreResult {
  const { config, logger } = options;
  const started = Date.now();
  const where = `snapshot file ${snapshotFile}`;
  // ATTACH and DETACH cannot run inside a transaction.
  db.prepare(`ATTACH DATABASE ? AS ${SNAPSHOT_SCHEMA}`).run(snapshotFile);
  let result: Omit<RestoreResult, "durationMs">;
  try {
    const facts = readSnapshotFacts(db, SNAPSHOT_SCHEMA, where);
    const mismatch = factsConfigMismatch(facts, config);
    if (mismatch !== undefined) {
      throw new SnapshotInvalidError(
        `${where} was made with another ${mismatch}: give this node the cluster's settings or use that cluster's snapshots`,
      );
    }
    logger.info("restoring a snapshot into the database; the app's writes wait until it commits", {
      snapshot_created: facts.createdAt,
      snapshot_node: facts.nodeId,
      tables: facts.tables,
    });
    result = db
      .transaction(() => {
        // A database marmot never ran on has no internal tables yet: installing capture creates them.
        if (!tableExists(db, APPLYING_TABLE)) installCapture(db, logger, config.tables);
        // Capture triggers skip writes while this row is there: the restore's own writes are not changes to send.
        db.prepare(`INSERT INTO ${quoteIdent(APPLYING_TABLE)} VALUES (1)`).run();
        // Read before the copy replaces them: the change logs hold only keys, the rows are in the tables.
        const pending = readPendingRows(db, logger);
        const copied = syncSchema(db, SNAPSHOT_SCHEMA, (plan) => copyTableRows(db, SNAPSHOT_SCHEMA, plan, logger), logger);
        reapplyPendingChanges(db, pending, logger);
        // Inside the transaction (as a savepoint), so that no app write after the commit goes uncaptured.
        installCapture(db, logger, config.tables);
        resetSchemaState(db, config.tables);
        recordCoveredSequences(db, facts.streams);
        db.prepare(`DELETE FROM ${quoteIdent(APPLYING_TABLE)}`).run();
        return { streams: facts.streams, tables: copied.tables, rows: copied.rows };
      })
      .immediate();
  } finally {
    db.prepare(`DETACH DATABASE ${SNAPSHOT_SCHEMA}`).run();
  }
  // The WAL holds the whole copy now; hand it to the database file while nobody needs it, without waiting for readers.
  try {
    db.pragma("wal_checkpoint(PASSIVE)");
  } catch (err) {
    logger.debug("checkpoint after the restore failed; SQLite checkpoints later", { reason: (err as Error).message });
  }
  const durationMs = Date.now() - started;
  options.metrics?.snapshotRestores.inc();
  options.metrics?.snapshotRestoreSeconds.set(durationMs / 1000);
  logger.info("restored the snapshot", { ...result, seconds: Number((durationMs / 1000).toFixed(2)) });
  return { ...result, durationMs };
}

/** The database now holds each stream up to the snapshot's sequence; parked changes at or below it are in the rows. */
function recordCoveredSequences(db: Database.Database, streams: Record<string, number>): void {
  const record = db.prepare(
    `INSERT INTO ${quoteIdent(APPLIED_TABLE)} (stream, seq) VALUES (?, ?) ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq`,
  );
  const unpark = db.prepare(`DELETE FROM ${quoteIdent(PARKED_TABLE)} WHERE stream = ? AND seq <= ?`);
  for (const [stream, seq] of Object.entries(streams)) {
    record.run(stream, BigInt(seq));
    unpark.run(stream, BigInt(seq));
  }
}
