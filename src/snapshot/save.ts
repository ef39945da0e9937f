// Saves a snapshot: a consistent copy of the database without marmot's objects, uploaded, then the manifest.

import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { pipeline } from "node:stream/promises";
import Database from "better-sqlite3";
import type { Config } from "../config/types.js";
import { SnapshotInvalidError } from "../errors.js";
import { silentLogger, type Logger } from "../log.js";
import type { Metrics } from "../metrics.js";
import { removeCapture } from "../sqlite/cleanup.js";
import { APPLIED_TABLE, isInternalName } from "../sqlite/names.js";
import { quoteIdent } from "../sqlite/quote.js";
import { schemaStream, shardStreams } from "../stream/streams.js";
import { writeSnapshotFacts, type SnapshotFacts } from "./facts.js";
import { encodeManifest, fetchLatestManifest, MANIFEST_NAME, snapshotObjectName, SNAPSHOT_FORMAT, type SnapshotManifest } from "./manifest.js";
import type { SnapshotStore, TransferProgress } from "./store.js";

export interface SaveSnapshotOptions {
  config: Config;
  store: SnapshotStore;
  logger: Logger;
  signal?: AbortSignal;
  /** bytes of the data object uploaded so far */
  onProgress?: (progress: TransferProgress) => void;
  metrics?: Metrics;
}

/**
 * Save a snapshot of `db` (marmot's connection) into the store. The data object goes up first, the manifest that
 * points at it last: a failed or aborted save leaves the previous snapshot the latest. Returns the new manifest.
 */
export async function saveSnapshot(db: Database.Database, options: SaveSnapshotOptions): Promise<SnapshotManifest> {
  const { config, store, logger, signal } = options;
  const started = Date.now();
  const copyPath = temporaryPathBeside(db.name, "snapshot");
  await removeAbandonedTemporaryFiles(db.name, logger);
  try {
    const createdAt = new Date();
    copyDatabase(db, copyPath);
    signal?.throwIfAborted();
    const facts = prepareCopy(copyPath, config, createdAt);
    signal?.throwIfAborted();

    const previous = await readPreviousManifest(store, logger);
    const object = snapshotObjectName(createdAt);
    const [sha256, { size }] = await Promise.all([
      sha256OfFile(copyPath, signal),
      store.upload(object, copyPath, { signal, onProgress: options.onProgress }).then(() => stat(copyPath)),
    ]);
    const manifest: SnapshotManifest = {
      ...facts,
      object,
      size,
      sha256,
      ...(previous === null || previous.object === object ? {} : { previous: previous.object }),
    };
    signal?.throwIfAborted();
    await store.writeSmall(MANIFEST_NAME, encodeManifest(manifest));

    // The new manifest names the previous object as its fallback; the one before that is no longer referenced.
    const stale = previous?.previous;
    if (stale !== undefined && stale !== object && stale !== previous?.object) {
      await store.remove(stale).catch((err: unknown) =>
        logger.warn("could not remove an older snapshot object; it stays in the store", {
          object: stale,
          store: store.description,
          reason: (err as Error).message,
        }),
      );
    }
    const seconds = (Date.now() - started) / 1000;
    options.metrics?.snapshotSizeBytes.set(size);
    options.metrics?.snapshotTime.set(Math.floor(createdAt.getTime() / 1000));
    options.metrics?.snapshotSaveSeconds.set(seconds);
    logger.info("saved a snapshot", {
      object,
      store: store.description,
      bytes: size,
      tables: facts.tables,
      streams: facts.streams,
      seconds: Number(seconds.toFixed(2)),
    });
    return manifest;
  } finally {
    await removeDatabaseFiles(copyPath);
  }
}

/**
 * VACUUM INTO is one read transaction on marmot's connection: the rows and the __marmot__applied sequences in the
 * copy come from the same moment, whatever the app and the applier write meanwhile. The copy goes beside the
 * database (the same file system, where the database's size is known to fit).
 */
function copyDatabase(db: Database.Database, copyPath: string): void {
  db.prepare("VACUUM INTO ?").run(copyPath);
}

/** On the copy: read the sequences it covers, remove marmot's objects, record the facts. Returns the facts. */
function prepareCopy(copyPath: string, config: Config, createdAt: Date): SnapshotFacts {
  const copy = new Database(copyPath);
  try {
    copy.defaultSafeIntegers(true);
    // A plain rollback-journal file: the snapshot is one self-contained file whatever the source's mode.
    copy.pragma("journal_mode = DELETE");
    const applied = readApplied(copy);
    const streams: Record<string, number> = {};
    // The schema stream too: a node restored from the copy applies schema changes from after its schema.
    for (const { stream } of [...shardStreams(config), schemaStream(config)]) streams[stream] = applied.get(stream) ?? 0;
    removeCapture(copy, silentLogger);
    const tables = copy
      .prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table'")
      .pluck(true)
      .all()
      .filter((name) => !isInternalName(String(name)) && !String(name).startsWith("sqlite_")).length;
    const facts: SnapshotFacts = {
      format: SNAPSHOT_FORMAT,
      createdAt: createdAt.toISOString(),
      nodeId: config.nodeId,
      streamPrefix: config.nats.streamPrefix,
      subjectPrefix: config.nats.subjectPrefix,
      shards: config.replicationLog.shards,
      streams,
      tables,
    };
    writeSnapshotFacts(copy, facts);
    // Change logs with many rows leave free pages behind; a snapshot should not carry them across the network.
    const pages = Number(copy.pragma("page_count", { simple: true }));
    const free = Number(copy.pragma("freelist_count", { simple: true }));
    if (free > 64 && free * 10 > pages) copy.exec("VACUUM");
    return facts;
  } finally {
    copy.close();
  }
}

function readApplied(copy: Database.Database): Map<string, number> {
  const exists = copy.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(APPLIED_TABLE);
  const applied = new Map<string, number>();
  if (exists === undefined) return applied;
  for (const row of copy.prepare(`SELECT stream, seq FROM ${quoteIdent(APPLIED_TABLE)}`).all() as { stream: string; seq: bigint }[]) {
    applied.set(row.stream, Number(row.seq));
  }
  return applied;
}

/** The store's current manifest; a damaged one is replaced by this save (and its objects are left alone). */
async function readPreviousManifest(store: SnapshotStore, logger: Logger): Promise<SnapshotManifest | null> {
  try {
    return await fetchLatestManifest(store);
  } catch (err) {
    if (!(err instanceof SnapshotInvalidError)) throw err;
    logger.warn("the store's snapshot manifest is not usable; this snapshot replaces it", { store: store.description, reason: err.message });
    return null;
  }
}

/** Hex SHA-256 of a file, read as a stream. */
export async function sha256OfFile(path: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash("sha256");
  await pipeline(createReadStream(path, { highWaterMark: 1024 * 1024 }), hash, { signal });
  return hash.digest("hex");
}

/** Temporary files older than this beside the database were left by a save or download that crashed. */
const ABANDONED_AFTER_MS = 6 * 60 * 60 * 1000;

/** Remove the temporary copies a crashed save or download left beside the database (old enough to be no one's). */
async function removeAbandonedTemporaryFiles(databasePath: string, logger: Logger): Promise<void> {
  const folder = dirname(databasePath);
  const prefix = `.${basename(databasePath)}.`;
  let names: string[];
  try {
    names = await readdir(folder);
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(prefix) || !/\.(snapshot|download)-[0-9a-f]{8}\.tmp(-journal|-wal|-shm)?$/.test(name)) continue;
    const path = join(folder, name);
    try {
      if (Date.now() - (await stat(path)).mtimeMs < ABANDONED_AFTER_MS) continue;
      await rm(path, { force: true });
      logger.info("removed a temporary snapshot file an earlier run left behind", { file: path });
    } catch {
      // gone meanwhile, or not ours to remove: it stays
    }
  }
}

/** A new name in the folder of `databasePath`, hidden, that no other process uses. */
export function temporaryPathBeside(databasePath: string, purpose: string): string {
  return join(dirname(databasePath), `.${basename(databasePath)}.${purpose}-${randomBytes(4).toString("hex")}.tmp`);
}

/** Remove a database file with its journal, WAL and shared-memory files. */
export async function removeDatabaseFiles(path: string): Promise<void> {
  await Promise.all(["", "-journal", "-wal", "-shm"].map((suffix) => rm(path + suffix, { force: true }).catch(() => undefined)));
}
