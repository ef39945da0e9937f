// Parked changes as an operator sees them: listing, counting and discarding them, and asking the running node to retry.

import type Database from "better-sqlite3";
import { decodeBatch } from "../wire/codec.js";
import { META_TABLE, PARKED_TABLE } from "./names.js";
import { quoteIdent } from "./quote.js";

export interface ParkedEntry {
  id: number;
  /** null when the whole message could not be decoded */
  table: string | null;
  reason: string;
  /** ms since the epoch */
  parkedAt: number;
  /** the node that wrote the change ("<node id>/<capture epoch>"), "" when the message could not be decoded */
  origin: string;
  stream: string;
  seq: number;
}

/**
 * The META key through which `marmot -parked` asks a running node to act: the node sees the write through its file
 * watcher, does what the value says ("retry", or "reload" after a discard) and deletes the key.
 */
export const PARKED_REQUEST_KEY = "parked_request";
export type ParkedRequest = "retry" | "reload";

function hasTable(db: Database.Database, name: string): boolean {
  return db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(name) !== undefined;
}

/** How many changes are parked; 0 when marmot never ran on this database. */
export function countParked(db: Database.Database): number {
  if (!hasTable(db, PARKED_TABLE)) return 0;
  return Number(
    db
      .prepare(`SELECT count(*) FROM ${quoteIdent(PARKED_TABLE)}`)
      .pluck(true)
      .get(),
  );
}

export function listParked(db: Database.Database): ParkedEntry[] {
  if (!hasTable(db, PARKED_TABLE)) return [];
  const rows = db.prepare(`SELECT id, stream, seq, tbl, reason, payload, parked_at FROM ${quoteIdent(PARKED_TABLE)} ORDER BY id`).all() as {
    id: bigint | number;
    stream: string;
    seq: bigint | number;
    tbl: string | null;
    reason: string;
    payload: Buffer;
    parked_at: bigint | number;
  }[];
  return rows.map((row) => ({
    id: Number(row.id),
    table: row.tbl,
    reason: row.reason,
    parkedAt: Number(row.parked_at),
    origin: originOf(row.payload),
    stream: row.stream,
    seq: Number(row.seq),
  }));
}

function originOf(payload: Buffer): string {
  try {
    return decodeBatch(payload).origin;
  } catch {
    return "";
  }
}

/** Deletes every parked change; returns how many went. */
export function discardParked(db: Database.Database): number {
  if (!hasTable(db, PARKED_TABLE)) return 0;
  return db.prepare(`DELETE FROM ${quoteIdent(PARKED_TABLE)}`).run().changes;
}

/** Leaves a request for the running node (see PARKED_REQUEST_KEY). */
export function requestParkedAction(db: Database.Database, request: ParkedRequest): void {
  db.prepare(`INSERT INTO ${quoteIdent(META_TABLE)} (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(
    PARKED_REQUEST_KEY,
    request,
  );
}

/** The request waiting for the node, if any, removed as it is taken. */
export function takeParkedRequest(db: Database.Database): ParkedRequest | undefined {
  const row = db.prepare(`DELETE FROM ${quoteIdent(META_TABLE)} WHERE key = ? RETURNING value`).get(PARKED_REQUEST_KEY) as
    | { value: string }
    | undefined;
  return row?.value === "retry" || row?.value === "reload" ? row.value : undefined;
}

/** Whether a request is still waiting (the CLI polls it to learn that a running node took it). */
export function parkedRequestPending(db: Database.Database): boolean {
  return db.prepare(`SELECT 1 FROM ${quoteIdent(META_TABLE)} WHERE key = ?`).get(PARKED_REQUEST_KEY) !== undefined;
}
