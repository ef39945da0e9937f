// The wire format of a batch of row changes: compact, exact for every SQLite value, and strict when decoding.
//
// Layout (all integers little-endian, lengths as unsigned LEB128 varints):
//   "MRMT" | version u8 | flags u8 (bit 0: body is raw-deflate compressed; bit 1: body is a large-change reference)
//   | body
//   body: origin str | table count | tables | change count | changes
//   table: name str | column count | column names | key count | key column names
//   change: table index | op u8 (1 upsert, 2 delete) | change id varint | values
//     upsert carries one value per table column, delete one per key column.
//   value: tag u8 then 0 NULL | 1 int64 (8 bytes) | 2 float64 (8 bytes) | 3 text (len + utf8)
//          | 4 blob (len + bytes) | 5 int32 (4 bytes)
//   reference body (a batch too large for one message, stored as an object): object name str | size varint
//          | sha-256 of the object (32 bytes). Never compressed. A reader that does not know bit 1 refuses the
//          message as it refuses any unknown flag.
//   bit 2: the body is a schema message, not rows (see schema-message.ts); only the schema stream carries it, and
//          decodeBatch refuses it, so a node that meets one on a shard stream parks it.

import { deflateRawSync, inflateRawSync } from "node:zlib";
import { DecodeError } from "../errors.js";
import type { SqlValue } from "./value.js";

export const MAGIC = Buffer.from("MRMT", "latin1");
export const VERSION = 1;
const FLAG_DEFLATE = 1;
const FLAG_REFERENCE = 2;
/** The body is a schema message (schema-message.ts). */
export const FLAG_SCHEMA = 4;
const SHA256_BYTES = 32;
export const HEADER_SIZE = 6;
/** Bodies smaller than this are not worth compressing. */
const COMPRESS_MIN_BYTES = 1024;
/** A body larger than this is compressed only when a sample of it compresses: a large BLOB is often compressed already. */
const COMPRESS_SAMPLE_ABOVE = 1024 * 1024;
const COMPRESS_SAMPLE_BYTES = 64 * 1024;
/** Decoded BLOBs at least this large share the message's memory instead of being copied out of it. */
const SHARE_BLOB_BYTES = 256 * 1024;
/**
 * Refuse to inflate beyond this: a corrupt or hostile message must not exhaust memory. A little over SQLite's
 * largest value (SQLITE_MAX_LENGTH, 1e9 bytes by default): a batch holding one such row still decodes.
 */
const MAX_INFLATED_BYTES = 1_000_000_000 + 64 * 1024 * 1024;

export type ChangeOp = "upsert" | "delete";

export interface WireTable {
  name: string;
  /** value order of an upsert ("rowid" first for rowid-keyed tables) */
  columns: string[];
  /** value order of a delete */
  keyColumns: string[];
}

export interface WireChange {
  table: WireTable;
  op: ChangeOp;
  /** id of the change in the origin's change log */
  changeId: number;
  values: SqlValue[];
}

export interface ChangeBatch {
  /** the writer: see batchOrigin() */
  origin: string;
  changes: WireChange[];
}

/**
 * The origin a node writes into its batches: its node id and its capture epoch ("<node id>/<epoch>"). Change ids
 * count within one installation of capture, so a node recognises as its own only the batches of its current one,
 * not those written before a cleanup, which a fresh start replays.
 */
export function batchOrigin(nodeId: string, epoch: string): string {
  return `${nodeId}/${epoch}`;
}

const TAG_NULL = 0;
const TAG_INT64 = 1;
const TAG_REAL = 2;
const TAG_TEXT = 3;
const TAG_BLOB = 4;
const TAG_INT32 = 5;
const INT32_MIN = -(2n ** 31n);
const INT32_MAX = 2n ** 31n - 1n;

/** Where a batch too large for one message is: an object holding its encoded bytes, and how to check them. */
export interface LargeBatchRef {
  object: string;
  size: number;
  sha256: Buffer;
}

/** A growable byte buffer for encoding. */
export class ByteWriter {
  private buf: Buffer;
  length = 0;

  constructor(initialSize = 4096) {
    this.buf = Buffer.allocUnsafe(initialSize);
  }

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  u8(v: number): void {
    this.reserve(1);
    this.buf[this.length++] = v;
  }

  varint(v: number): void {
    this.reserve(10);
    while (v >= 0x80) {
      this.buf[this.length++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.length++] = v;
  }

  str(s: string): void {
    const n = Buffer.byteLength(s, "utf8");
    this.varint(n);
    this.reserve(n);
    this.buf.write(s, this.length, n, "utf8");
    this.length += n;
  }

  bytes(b: Uint8Array): void {
    this.varint(b.length);
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }

  value(v: SqlValue): void {
    if (v === null) {
      this.u8(TAG_NULL);
    } else if (typeof v === "bigint") {
      if (v >= INT32_MIN && v <= INT32_MAX) {
        this.reserve(5);
        this.buf[this.length++] = TAG_INT32;
        this.buf.writeInt32LE(Number(v), this.length);
        this.length += 4;
      } else {
        this.reserve(9);
        this.buf[this.length++] = TAG_INT64;
        this.buf.writeBigInt64LE(v, this.length);
        this.length += 8;
      }
    } else if (typeof v === "number") {
      this.reserve(9);
      this.buf[this.length++] = TAG_REAL;
      this.buf.writeDoubleLE(v, this.length);
      this.length += 8;
    } else if (typeof v === "string") {
      this.u8(TAG_TEXT);
      this.str(v);
    } else if (v instanceof Uint8Array) {
      this.u8(TAG_BLOB);
      this.bytes(v);
    } else {
      throw new TypeError(`cannot encode a value of type ${typeof v}`);
    }
  }

  finish(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

export class ByteReader {
  offset = 0;
  constructor(private readonly buf: Buffer) {}

  private need(n: number, what: string): void {
    if (this.offset + n > this.buf.length) {
      throw new DecodeError(`truncated batch: ${what} needs ${n} bytes at offset ${this.offset}, ${this.buf.length - this.offset} left`);
    }
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.offset++]!;
  }

  varint(what: string): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8(what);
      result += (b & 0x7f) * scale;
      if (b < 0x80) return result;
      scale *= 0x80;
    }
    throw new DecodeError(`bad varint for ${what} at offset ${this.offset}`);
  }

  str(what: string): string {
    const n = this.varint(what);
    this.need(n, what);
    const s = textDecoder.decode(this.buf.subarray(this.offset, this.offset + n));
    this.offset += n;
    return s;
  }

  value(what: string): SqlValue {
    const tag = this.u8(what);
    switch (tag) {
      case TAG_NULL:
        return null;
      case TAG_INT32: {
        this.need(4, what);
        const v = BigInt(this.buf.readInt32LE(this.offset));
        this.offset += 4;
        return v;
      }
      case TAG_INT64: {
        this.need(8, what);
        const v = this.buf.readBigInt64LE(this.offset);
        this.offset += 8;
        return v;
      }
      case TAG_REAL: {
        this.need(8, what);
        const v = this.buf.readDoubleLE(this.offset);
        this.offset += 8;
        return v;
      }
      case TAG_TEXT:
        return this.str(what);
      case TAG_BLOB: {
        const n = this.varint(what);
        this.need(n, what);
        // Small values are copied, so they do not pin the whole message buffer; a large one is most of its message
        // anyway, and a copy would double the memory a large row takes.
        const view = this.buf.subarray(this.offset, this.offset + n);
        const v = n >= SHARE_BLOB_BYTES ? view : Buffer.from(view);
        this.offset += n;
        return v;
      }
      default:
        throw new DecodeError(`unknown value tag ${tag} for ${what} at offset ${this.offset - 1}`);
    }
  }

  done(): boolean {
    return this.offset === this.buf.length;
  }
}

const textDecoder = new TextDecoder("utf-8", { fatal: true });

/** An upper bound of a value's encoded size, exact for TEXT and BLOB: the buffer is sized once, not grown. */
function valueBound(v: SqlValue): number {
  if (typeof v === "string") return 1 + 10 + Buffer.byteLength(v, "utf8");
  if (v instanceof Uint8Array) return 1 + 10 + v.length;
  return 9;
}

/** Whether deflating `body` pays: for a large body, judged on a sample from its middle. */
function worthCompressing(body: Buffer): boolean {
  if (body.length < COMPRESS_MIN_BYTES) return false;
  if (body.length <= COMPRESS_SAMPLE_ABOVE) return true;
  const start = Math.floor((body.length - COMPRESS_SAMPLE_BYTES) / 2);
  const sample = body.subarray(start, start + COMPRESS_SAMPLE_BYTES);
  return deflateRawSync(sample, { level: 1 }).length < sample.length * 0.9;
}

/** Encode a batch; compress the body when asked and when it pays. */
export function encodeBatch(batch: ChangeBatch, options: { compress?: boolean } = {}): Buffer {
  let bound = HEADER_SIZE + 64 + Buffer.byteLength(batch.origin, "utf8");
  for (const change of batch.changes) {
    bound += 32;
    for (const v of change.values) bound += valueBound(v);
  }
  // The header goes in front of the body in the same buffer, so an uncompressed batch is never copied.
  const body = new ByteWriter(bound + 16 * 1024);
  for (let i = 0; i < HEADER_SIZE; i++) body.u8(0);
  body.str(batch.origin);
  const tableIndex = new Map<WireTable, number>();
  const tables: WireTable[] = [];
  for (const change of batch.changes) {
    if (!tableIndex.has(change.table)) {
      tableIndex.set(change.table, tables.length);
      tables.push(change.table);
    }
  }
  body.varint(tables.length);
  for (const table of tables) {
    body.str(table.name);
    body.varint(table.columns.length);
    for (const c of table.columns) body.str(c);
    body.varint(table.keyColumns.length);
    for (const c of table.keyColumns) body.str(c);
  }
  body.varint(batch.changes.length);
  for (const change of batch.changes) {
    const expected = change.op === "upsert" ? change.table.columns.length : change.table.keyColumns.length;
    if (change.values.length !== expected) {
      throw new TypeError(`${change.op} on ${change.table.name} has ${change.values.length} values, expected ${expected}`);
    }
    body.varint(tableIndex.get(change.table)!);
    body.u8(change.op === "upsert" ? 1 : 2);
    body.varint(change.changeId);
    for (const v of change.values) body.value(v);
  }
  let out = body.finish();
  let flags = 0;
  const payload = out.subarray(HEADER_SIZE);
  if (options.compress && worthCompressing(payload)) {
    const deflated = deflateRawSync(payload, { level: 1 });
    if (deflated.length < payload.length * 0.9) {
      out = Buffer.allocUnsafe(HEADER_SIZE + deflated.length);
      deflated.copy(out, HEADER_SIZE);
      flags |= FLAG_DEFLATE;
    }
  }
  MAGIC.copy(out, 0);
  out[4] = VERSION;
  out[5] = flags;
  return out;
}

/** The small message that stands for a batch stored as an object. */
export function encodeReference(ref: LargeBatchRef): Buffer {
  if (ref.sha256.length !== SHA256_BYTES) throw new TypeError(`a sha-256 digest has ${SHA256_BYTES} bytes, not ${ref.sha256.length}`);
  const w = new ByteWriter(128);
  w.str(ref.object);
  w.varint(ref.size);
  const body = w.finish();
  const out = Buffer.allocUnsafe(HEADER_SIZE + body.length + SHA256_BYTES);
  MAGIC.copy(out, 0);
  out[4] = VERSION;
  out[5] = FLAG_REFERENCE;
  body.copy(out, HEADER_SIZE);
  ref.sha256.copy(out, HEADER_SIZE + body.length);
  return out;
}

/** The header's flags, after checking magic, version and that every flag is known. */
export function checkedFlags(buf: Buffer): number {
  if (buf.length < HEADER_SIZE || !buf.subarray(0, 4).equals(MAGIC)) {
    throw new DecodeError("not a marmot batch (bad magic)");
  }
  if (buf[4] !== VERSION) throw new DecodeError(`unsupported batch version ${buf[4]} (this marmot reads version ${VERSION})`);
  const flags = buf[5]!;
  if (flags & ~(FLAG_DEFLATE | FLAG_REFERENCE | FLAG_SCHEMA)) throw new DecodeError(`unknown batch flags 0x${flags.toString(16)}`);
  if (flags & FLAG_REFERENCE && flags & FLAG_DEFLATE) throw new DecodeError("a large-change reference cannot be compressed (flags 0x3)");
  if (flags & FLAG_SCHEMA && flags !== FLAG_SCHEMA) throw new DecodeError(`a schema message carries no other flag (flags 0x${flags.toString(16)})`);
  return flags;
}

export const asBuffer = (data: Uint8Array): Buffer => (Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength));

/**
 * The reference in `data` when it is one; undefined for anything else (a batch, or bytes that are not marmot's:
 * decodeBatch says what is wrong with those). A malformed reference raises DecodeError.
 */
export function decodeReference(data: Uint8Array): LargeBatchRef | undefined {
  const buf = asBuffer(data);
  let flags: number;
  try {
    flags = checkedFlags(buf);
  } catch {
    return undefined;
  }
  if (!(flags & FLAG_REFERENCE)) return undefined;
  if (buf.length < HEADER_SIZE + SHA256_BYTES) throw new DecodeError(`truncated large-change reference: ${buf.length} bytes`);
  const r = new ByteReader(buf.subarray(HEADER_SIZE, buf.length - SHA256_BYTES));
  try {
    const object = r.str("object name");
    const size = r.varint("object size");
    if (object === "") throw new DecodeError("a large-change reference names no object");
    if (!r.done()) throw new DecodeError("trailing bytes in a large-change reference");
    return { object, size, sha256: Buffer.from(buf.subarray(buf.length - SHA256_BYTES)) };
  } catch (err) {
    if (err instanceof TypeError) throw new DecodeError(`object name is not valid UTF-8: ${err.message}`);
    throw err;
  }
}

/** Decode a batch; anything that is not a well-formed marmot batch raises DecodeError. */
export function decodeBatch(data: Uint8Array): ChangeBatch {
  const buf = asBuffer(data);
  const flags = checkedFlags(buf);
  if (flags & FLAG_REFERENCE) {
    const ref = decodeReference(buf)!;
    throw new DecodeError(
      `the message stands for large object "${ref.object}" (${ref.size} bytes), which this node could not read whole and intact; its log says why`,
    );
  }
  if (flags & FLAG_SCHEMA) throw new DecodeError("a schema message, not a batch of row changes: it belongs on the schema stream");
  let body = buf.subarray(HEADER_SIZE);
  if (flags & FLAG_DEFLATE) {
    try {
      body = inflateRawSync(body, { maxOutputLength: MAX_INFLATED_BYTES });
    } catch (err) {
      throw new DecodeError(`compressed batch does not inflate: ${(err as Error).message}`);
    }
  }
  const r = new ByteReader(body);
  try {
    const origin = r.str("origin");
    const tableCount = r.varint("table count");
    const tables: WireTable[] = [];
    for (let t = 0; t < tableCount; t++) {
      const name = r.str("table name");
      const columns: string[] = [];
      const columnCount = r.varint("column count");
      for (let i = 0; i < columnCount; i++) columns.push(r.str("column name"));
      const keyColumns: string[] = [];
      const keyCount = r.varint("key count");
      for (let i = 0; i < keyCount; i++) keyColumns.push(r.str("key column name"));
      tables.push({ name, columns, keyColumns });
    }
    const changeCount = r.varint("change count");
    const changes: WireChange[] = [];
    for (let i = 0; i < changeCount; i++) {
      const index = r.varint("table index");
      const table = tables[index];
      if (!table) throw new DecodeError(`change ${i} names table index ${index}, batch has ${tables.length} tables`);
      const opCode = r.u8("op");
      if (opCode !== 1 && opCode !== 2) throw new DecodeError(`change ${i} has unknown op ${opCode}`);
      const op: ChangeOp = opCode === 1 ? "upsert" : "delete";
      const changeId = r.varint("change id");
      const n = op === "upsert" ? table.columns.length : table.keyColumns.length;
      const values: SqlValue[] = new Array(n);
      for (let v = 0; v < n; v++) values[v] = r.value(`value ${v} of change ${i}`);
      changes.push({ table, op, changeId, values });
    }
    if (!r.done()) throw new DecodeError(`${body.length - r.offset} trailing bytes after the last change`);
    return { origin, changes };
  } catch (err) {
    if (err instanceof DecodeError) throw err;
    if (err instanceof TypeError) throw new DecodeError(`text is not valid UTF-8: ${err.message}`);
    throw err;
  }
}
