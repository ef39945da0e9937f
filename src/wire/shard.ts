// Which shard a row belongs to: every change to one row goes to one stream, so its order there decides the last writer.

import { ByteWriter } from "./codec.js";
import type { SqlValue } from "./value.js";

/** FNV-1a, 32 bit: stable across nodes and releases (changing it would split a row's history over two streams). */
function fnv1a32(bytes: Uint8Array): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    hash ^= bytes[i]!;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash >>> 0;
}

/** The bytes that identify a row: table name and key values, encoded as on the wire. */
export function rowKeyBytes(table: string, key: readonly SqlValue[]): Buffer {
  return rowKeyInto(new ByteWriter(64 + table.length * 3), table, key);
}

/** rowKeyBytes written into `w` from its start, for a caller that hashes millions of keys without allocating. */
export function rowKeyInto(w: ByteWriter, table: string, key: readonly SqlValue[]): Buffer {
  w.length = 0;
  w.str(table);
  for (const v of key) w.value(v);
  return w.finish();
}

/** The same identity as a string, for use as a map key. */
export function rowKeyString(keyBytes: Buffer): string {
  return keyBytes.toString("latin1");
}

/** Shard number, 1-based, for a row key. */
export function shardOf(keyBytes: Uint8Array, shards: number): number {
  return (fnv1a32(keyBytes) % shards) + 1;
}

/**
 * The shard of a row of `table` (keyBytes from rowKeyBytes). A table whose rows can clash on a UNIQUE value
 * besides their key (`wholeTable`) keeps all its rows on one shard, chosen by its name: one stream then orders
 * every write of that table, so the later of two clashing rows wins on every node (see Applier.replaceConflicting).
 * Across streams there is no common order, and two nodes could keep different rows.
 */
export function shardOfRow(table: string, keyBytes: Uint8Array, shards: number, wholeTable: boolean): number {
  return wholeTable ? shardOf(rowKeyBytes(table, []), shards) : shardOf(keyBytes, shards);
}
