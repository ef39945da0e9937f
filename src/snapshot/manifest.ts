// The snapshot format: the manifest object that points at the latest data object, and the checks a node makes
// before it takes a snapshot (its own format version, stream and subject prefixes, shard count).

import { randomBytes } from "node:crypto";
import type { Config } from "../config/types.js";
import { SnapshotInvalidError } from "../errors.js";
import { shardStreams } from "../stream/streams.js";
import type { SnapshotStore } from "./store.js";

/** Raised whenever the data object or the manifest change in a way an older marmot could not read. */
export const SNAPSHOT_FORMAT = 1;

/** Written last, whole, over the previous one: while it is not replaced, the previous snapshot stays the latest. */
export const MANIFEST_NAME = "latest.json";

const OBJECT_PREFIX = "snapshot-";
const OBJECT_SUFFIX = ".db";

export interface SnapshotManifest {
  format: number;
  /** name of the data object in the store */
  object: string;
  /** bytes of the data object */
  size: number;
  /** hex sha256 of the data object */
  sha256: string;
  /** ISO time the snapshot's read transaction began */
  createdAt: string;
  nodeId: string;
  streamPrefix: string;
  subjectPrefix: string;
  shards: number;
  /** stream name -> last sequence applied in the snapshot (0: nothing of that stream) */
  streams: Record<string, number>;
  /** user tables in the snapshot */
  tables: number;
  /** the data object of the snapshot before this one, kept until the next save (absent for the first) */
  previous?: string;
}

/** A new data object's name: its creation time to the second and a random suffix, e.g. snapshot-20261130T031500Z-ab12cd.db. */
export function snapshotObjectName(at: Date): string {
  const stamp = at
    .toISOString()
    .replace(/\.\d{3}Z$/, "Z")
    .replaceAll("-", "")
    .replaceAll(":", "");
  return `${OBJECT_PREFIX}${stamp}-${randomBytes(3).toString("hex")}${OBJECT_SUFFIX}`;
}

/** Whether `name` is a data object this format writes (what may be removed as an older snapshot). */
export function isSnapshotObjectName(name: string): boolean {
  return name.startsWith(OBJECT_PREFIX) && name.endsWith(OBJECT_SUFFIX) && !name.includes("/");
}

export function encodeManifest(manifest: SnapshotManifest): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(manifest, null, 2)}\n`);
}

/** Parse a manifest strictly: anything missing or of the wrong type is a SnapshotInvalidError naming `where`. */
export function parseManifest(bytes: Uint8Array, where: string): SnapshotManifest {
  const invalid = (problem: string) =>
    new SnapshotInvalidError(
      `the snapshot manifest ${where} ${problem}; it was not written by this marmot or is damaged: save a new snapshot (marmot -save-snapshot) or remove it`,
    );
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw invalid(`is not valid JSON (${(err as Error).message})`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw invalid("is not a JSON object");
  const m = parsed as Record<string, unknown>;
  const text = (key: string): string => {
    if (typeof m[key] !== "string" || m[key] === "") throw invalid(`has no text field "${key}"`);
    return m[key];
  };
  const count = (key: string): number => {
    const value = m[key];
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) throw invalid(`has no whole number field "${key}"`);
    return value;
  };
  const format = count("format");
  if (format !== SNAPSHOT_FORMAT) {
    throw new SnapshotInvalidError(
      `the snapshot ${where} has format ${format}; this marmot reads format ${SNAPSHOT_FORMAT}: save a new snapshot with this marmot (marmot -save-snapshot)`,
    );
  }
  const object = text("object");
  if (!isSnapshotObjectName(object)) throw invalid(`names an object "${object}" that is not a snapshot data object`);
  const sha256 = text("sha256");
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw invalid('has a field "sha256" that is not a hex SHA-256');
  const createdAt = text("createdAt");
  if (Number.isNaN(Date.parse(createdAt))) throw invalid('has a field "createdAt" that is not a time');
  const streamsValue = m.streams;
  if (typeof streamsValue !== "object" || streamsValue === null || Array.isArray(streamsValue)) throw invalid('has no object field "streams"');
  const streams: Record<string, number> = {};
  for (const [name, seq] of Object.entries(streamsValue)) {
    if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 0) throw invalid(`has a bad sequence for stream "${name}"`);
    streams[name] = seq;
  }
  const shards = count("shards");
  if (shards < 1) throw invalid('has a field "shards" below 1');
  const previous = m.previous;
  if (previous !== undefined && (typeof previous !== "string" || !isSnapshotObjectName(previous))) {
    throw invalid('has a field "previous" that is not a snapshot data object');
  }
  return {
    format,
    object,
    size: count("size"),
    sha256,
    createdAt,
    nodeId: text("nodeId"),
    streamPrefix: text("streamPrefix"),
    subjectPrefix: text("subjectPrefix"),
    shards,
    streams,
    tables: count("tables"),
    ...(previous === undefined ? {} : { previous }),
  };
}

/**
 * Throws SnapshotInvalidError when the snapshot was made for other streams than this node's config names: its
 * sequences would then say nothing about this node's streams (and rows hash onto other shards under another count).
 */
export function checkManifestFits(manifest: SnapshotManifest, config: Config, where: string): void {
  const differs = (setting: string, theirs: string | number, ours: string | number) =>
    new SnapshotInvalidError(
      `the snapshot ${where} was made with ${setting} = ${JSON.stringify(theirs)}, this node has ${JSON.stringify(ours)}: ` +
        `give this node the same ${setting} as the cluster the snapshot comes from, or point [snapshot] at that cluster's own store`,
    );
  if (manifest.streamPrefix !== config.nats.streamPrefix) throw differs("[nats] stream_prefix", manifest.streamPrefix, config.nats.streamPrefix);
  if (manifest.subjectPrefix !== config.nats.subjectPrefix) throw differs("[nats] subject_prefix", manifest.subjectPrefix, config.nats.subjectPrefix);
  if (manifest.shards !== config.replicationLog.shards) throw differs("[replication_log] shards", manifest.shards, config.replicationLog.shards);
  for (const { stream } of shardStreams(config)) {
    if (manifest.streams[stream] === undefined) {
      throw new SnapshotInvalidError(`the snapshot ${where} does not record stream "${stream}" of this node's config: save a new snapshot`);
    }
  }
}

/** The latest manifest in `store`, or null when the store holds none. Throws SnapshotInvalidError for a bad one. */
export async function fetchLatestManifest(store: SnapshotStore): Promise<SnapshotManifest | null> {
  const bytes = await store.readSmall(MANIFEST_NAME);
  if (bytes === null) return null;
  return parseManifest(bytes, `${MANIFEST_NAME} in ${store.description}`);
}
