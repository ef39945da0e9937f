// Digests of a table's rows, one per shard, from one scan: what nodes compare to prove they hold the same rows.
//
// A row's digest is a 64-bit hash of its values in the codec's exact encoding (so 1, 1.0, '1' and x'31' differ,
// as do 0.0 and -0.0), and a shard's digest is the sum of its rows' digests with their count: a sum does not
// depend on the order of the scan, so no ORDER BY (and no sort of a million rows) is needed.

import type { Database } from "better-sqlite3";
import { wireTableOf } from "../sqlite/change-log.js";
import { ROWID_KEY } from "../sqlite/names.js";
import { quoteIdent } from "../sqlite/quote.js";
import { rowidAlias } from "../sqlite/schema.js";
import type { TableInfo } from "../sqlite/table.js";
import { ByteWriter } from "../wire/codec.js";
import { rowKeyInto, shardOf, shardOfRow } from "../wire/shard.js";
import type { SqlValue } from "../wire/value.js";

/** The rows of one table on one shard: how many, and the 64-bit sum of their hashes as 16 hex digits. */
export interface ShardDigest {
  rows: number;
  hash: string;
}

/** Rows read between two yields to the event loop: a few milliseconds of work, so marmot never freezes. */
const CHUNK_ROWS = 4096;

/**
 * Two independent 32-bit lanes over the bytes, four at a time (murmur3's block step, and murmur2's), each finished
 * with murmur3's mixer: 64 bits per row. Kept here rather than a package: a few lines, run a million times a scan.
 */
function addRow(acc: Accumulator, bytes: Buffer, length: number): void {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  const words = length & ~3;
  let i = 0;
  for (; i < words; i += 4) {
    const k = bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24);
    let k1 = Math.imul(k, 0xcc9e2d51);
    k1 = Math.imul((k1 << 15) | (k1 >>> 17), 0x1b873593);
    a ^= k1;
    a = (a << 13) | (a >>> 19);
    a = (Math.imul(a, 5) + 0xe6546b64) | 0;
    b = Math.imul(b ^ k, 0x5bd1e995);
    b ^= b >>> 15;
  }
  for (; i < length; i++) {
    const byte = bytes[i]!;
    a = Math.imul(a ^ byte, 0x01000193);
    b = Math.imul(b ^ byte, 0x5bd1e995);
  }
  acc.add(mix(a ^ length), mix(b ^ length));
}

function mix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Running sums of one shard's rows. */
class Accumulator {
  rows = 0;
  high = 0;
  low = 0;

  add(high: number, low: number): void {
    this.rows++;
    const sum = this.low + low;
    this.low = sum >>> 0;
    this.high = (this.high + high + (sum > 0xffffffff ? 1 : 0)) >>> 0;
  }

  digest(): ShardDigest {
    return { rows: this.rows, hash: this.high.toString(16).padStart(8, "0") + this.low.toString(16).padStart(8, "0") };
  }
}

/**
 * The digest of each shard (1..shards) of `table`, read through `db` (a connection of its own, inside the read
 * transaction that fixes what is compared). Yields to the event loop every few thousand rows; stops with the
 * signal's reason when it aborts.
 */
export async function digestTable(db: Database, table: TableInfo, shards: number, signal?: AbortSignal): Promise<ShardDigest[]> {
  const wire = wireTableOf(table);
  const select = wire.columns.map((c) => (table.rowidKeyed && c === ROWID_KEY ? rowidAlias(table) : quoteIdent(c)));
  const keyPositions = wire.keyColumns.map((k) => wire.columns.indexOf(k));
  const statement = db
    .prepare(`SELECT ${select.join(", ")} FROM ${quoteIdent(table.name)}`)
    .raw(true)
    .safeIntegers(true);
  const wholeTable = table.uniqueBeyondKey === true || shards === 1;
  const accumulators = Array.from({ length: shards }, () => new Accumulator());
  const tableShard = shardOfRow(table.name, new Uint8Array(), shards, true);
  const writer = new ByteWriter(1024);
  const keyWriter = new ByteWriter(256);
  const key: SqlValue[] = new Array<SqlValue>(keyPositions.length);
  const rows = statement.iterate() as IterableIterator<SqlValue[]>;
  try {
    for (;;) {
      for (let n = 0; n < CHUNK_ROWS; n++) {
        const next = rows.next();
        if (next.done) return accumulators.map((a) => a.digest());
        const values = next.value;
        writer.length = 0;
        for (const v of values) writer.value(v);
        let shard = tableShard;
        if (!wholeTable) {
          for (let k = 0; k < keyPositions.length; k++) key[k] = values[keyPositions[k]!]!;
          shard = shardOf(rowKeyInto(keyWriter, table.name, key), shards);
        }
        addRow(accumulators[shard - 1]!, writer.finish(), writer.length);
      }
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (signal?.aborted) throw signal.reason;
    }
  } finally {
    rows.return?.();
  }
}
