// The facts a snapshot file carries about itself (table __marmot__snapshot): what it covers and for which config.

import type Database from "better-sqlite3";
import type { Config } from "../config/types.js";
import { SnapshotInvalidError } from "../errors.js";
import { SNAPSHOT_TABLE } from "../sqlite/names.js";
import { quoteIdent } from "../sqlite/quote.js";
import { SNAPSHOT_FORMAT, type SnapshotManifest } from "./manifest.js";

/** The manifest without what only the store knows (object name, size, checksum, the previous object). */
export type SnapshotFacts = Omit<SnapshotManifest, "object" | "size" | "sha256" | "previous">;

const KEYS = ["format", "createdAt", "nodeId", "streamPrefix", "subjectPrefix", "shards", "streams", "tables"] as const;

/** Write the facts into a snapshot copy (schema main of `copy`). */
export function writeSnapshotFacts(copy: Database.Database, facts: SnapshotFacts): void {
  copy.exec(`CREATE TABLE ${quoteIdent(SNAPSHOT_TABLE)} (key TEXT PRIMARY KEY, value TEXT NOT NULL)`);
  const insert = copy.prepare(`INSERT INTO ${quoteIdent(SNAPSHOT_TABLE)} (key, value) VALUES (?, ?)`);
  for (const key of KEYS) insert.run(key, JSON.stringify(facts[key]));
}

/**
 * Read the facts of the snapshot file attached (or opened) as `schema`. Throws SnapshotInvalidError naming `where`
 * when the file is not a marmot snapshot or its facts are damaged.
 */
export function readSnapshotFacts(db: Database.Database, schema: string, where: string): SnapshotFacts {
  const invalid = (problem: string) =>
    new SnapshotInvalidError(`${where} ${problem}: it is not a snapshot this marmot wrote, or it is damaged; save a new snapshot`);
  let rows: { key: string; value: string }[];
  try {
    rows = db.prepare(`SELECT key, value FROM ${quoteIdent(schema)}.${quoteIdent(SNAPSHOT_TABLE)}`).all() as { key: string; value: string }[];
  } catch (err) {
    throw invalid(`has no readable table ${SNAPSHOT_TABLE} (${(err as Error).message})`);
  }
  const values = new Map<string, unknown>();
  for (const row of rows) {
    try {
      values.set(row.key, JSON.parse(String(row.value)));
    } catch {
      throw invalid(`has a value of "${row.key}" that is not JSON`);
    }
  }
  const text = (key: string) => {
    const v = values.get(key);
    if (typeof v !== "string") throw invalid(`lacks "${key}"`);
    return v;
  };
  const count = (key: string) => {
    const v = values.get(key);
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw invalid(`lacks "${key}"`);
    return v;
  };
  const streamsValue = values.get("streams");
  if (typeof streamsValue !== "object" || streamsValue === null) throw invalid('lacks "streams"');
  const streams: Record<string, number> = {};
  for (const [name, seq] of Object.entries(streamsValue)) {
    if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 0) throw invalid(`has a bad sequence for stream "${name}"`);
    streams[name] = seq;
  }
  const format = count("format");
  if (format !== SNAPSHOT_FORMAT) {
    throw new SnapshotInvalidError(
      `${where} has snapshot format ${format}; this marmot reads format ${SNAPSHOT_FORMAT}: save a new snapshot with this marmot`,
    );
  }
  return {
    format,
    createdAt: text("createdAt"),
    nodeId: text("nodeId"),
    streamPrefix: text("streamPrefix"),
    subjectPrefix: text("subjectPrefix"),
    shards: count("shards"),
    streams,
    tables: count("tables"),
  };
}

/** Throws SnapshotInvalidError naming the first fact of the file that differs from the manifest that points at it. */
export function checkFactsMatchManifest(facts: SnapshotFacts, manifest: SnapshotManifest, where: string): void {
  for (const key of KEYS) {
    const theirs = JSON.stringify(facts[key]);
    const ours = JSON.stringify(manifest[key]);
    if (key === "streams" ? !sameStreams(facts.streams, manifest.streams) : theirs !== ours) {
      throw new SnapshotInvalidError(
        `${where} says ${key} = ${theirs} but its manifest says ${ours}: the store holds mixed objects; save a new snapshot`,
      );
    }
  }
}

function sameStreams(a: Record<string, number>, b: Record<string, number>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}

/** The facts' part of checkManifestFits, for a file restored without a manifest at hand. */
export function factsConfigMismatch(facts: SnapshotFacts, config: Config): string | undefined {
  if (facts.streamPrefix !== config.nats.streamPrefix)
    return `[nats] stream_prefix (snapshot ${JSON.stringify(facts.streamPrefix)}, this node ${JSON.stringify(config.nats.streamPrefix)})`;
  if (facts.subjectPrefix !== config.nats.subjectPrefix)
    return `[nats] subject_prefix (snapshot ${JSON.stringify(facts.subjectPrefix)}, this node ${JSON.stringify(config.nats.subjectPrefix)})`;
  if (facts.shards !== config.replicationLog.shards)
    return `[replication_log] shards (snapshot ${facts.shards}, this node ${config.replicationLog.shards})`;
  return undefined;
}
