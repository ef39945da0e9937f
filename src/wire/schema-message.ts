// The wire format of a schema message: which user objects now have which definitions, and which are gone.
//
// Header as a batch's (codec.ts) with flag bit 2 alone, then (lengths as varints, text as UTF-8):
//   origin str | id varint | object count | objects
//   object: type u8 (1 table, 2 index, 3 view, 4 trigger) | name str | table name str | defined u8 (0 dropped,
//           1 defined) | sql str (when defined: the exact text sqlite_schema holds on the origin)

import { DecodeError } from "../errors.js";
import { asBuffer, ByteReader, ByteWriter, checkedFlags, FLAG_SCHEMA, HEADER_SIZE, MAGIC, VERSION } from "./codec.js";

export type SchemaObjectType = "table" | "index" | "view" | "trigger";

/** One object of sqlite_schema as it now is on the origin: `sql` null when the origin dropped it. */
export interface SchemaChange {
  type: SchemaObjectType;
  name: string;
  tblName: string;
  sql: string | null;
}

export interface SchemaMessage {
  /** the writer: batchOrigin() of its node */
  origin: string;
  /** the message's id in its origin's outbox: its own messages coming back are recognised by it */
  id: number;
  changes: SchemaChange[];
}

const TYPES: readonly SchemaObjectType[] = ["table", "index", "view", "trigger"];

export function encodeSchemaMessage(message: SchemaMessage): Buffer {
  const w = new ByteWriter(1024);
  for (const b of MAGIC) w.u8(b);
  w.u8(VERSION);
  w.u8(FLAG_SCHEMA);
  w.str(message.origin);
  w.varint(message.id);
  w.varint(message.changes.length);
  for (const change of message.changes) {
    w.u8(TYPES.indexOf(change.type) + 1);
    w.str(change.name);
    w.str(change.tblName);
    w.u8(change.sql === null ? 0 : 1);
    if (change.sql !== null) w.str(change.sql);
  }
  return Buffer.from(w.finish());
}

/** Whether `data` is a schema message (it may still be malformed: decodeSchemaMessage says how). */
export function isSchemaMessage(data: Uint8Array): boolean {
  try {
    return (checkedFlags(asBuffer(data)) & FLAG_SCHEMA) !== 0;
  } catch {
    return false;
  }
}

/** Anything that is not a well-formed schema message raises DecodeError. */
export function decodeSchemaMessage(data: Uint8Array): SchemaMessage {
  const buf = asBuffer(data);
  if (!(checkedFlags(buf) & FLAG_SCHEMA)) throw new DecodeError("not a schema message (a batch of row changes on the schema stream)");
  const r = new ByteReader(buf.subarray(HEADER_SIZE));
  try {
    const origin = r.str("origin");
    const id = r.varint("message id");
    const count = r.varint("object count");
    const changes: SchemaChange[] = [];
    for (let i = 0; i < count; i++) {
      const code = r.u8("object type");
      const type = TYPES[code - 1];
      if (type === undefined) throw new DecodeError(`object ${i} has unknown type ${code}`);
      const name = r.str("object name");
      const tblName = r.str("table name");
      const defined = r.u8("defined");
      if (defined > 1) throw new DecodeError(`object ${i} ("${name}") has defined = ${defined}, not 0 or 1`);
      const sql = defined === 1 ? r.str("sql") : null;
      if (name === "" || (sql !== null && sql.trim() === "")) throw new DecodeError(`object ${i} has an empty name or definition`);
      changes.push({ type, name, tblName, sql });
    }
    if (!r.done()) throw new DecodeError("trailing bytes after the last object of a schema message");
    return { origin, id, changes };
  } catch (err) {
    if (err instanceof DecodeError) throw err;
    if (err instanceof TypeError) throw new DecodeError(`text is not valid UTF-8: ${err.message}`);
    throw err;
  }
}
