// Schema messages carry SQL text exactly, are told apart from row batches, and bad ones are refused with a reason.

import assert from "node:assert/strict";
import { test } from "node:test";
import { DecodeError } from "../../src/errors.js";
import { decodeBatch } from "../../src/wire/codec.js";
import { decodeSchemaMessage, encodeSchemaMessage, isSchemaMessage, type SchemaMessage } from "../../src/wire/schema-message.js";
import { isColumnAppend, renamedColumns } from "../../src/sqlite/schema-apply.js";

const message: SchemaMessage = {
  origin: "1/abcdef",
  id: 300,
  changes: [
    { type: "table", name: 'Bücher "x"', tblName: 'Bücher "x"', sql: 'CREATE TABLE "Bücher ""x""" (id INTEGER PRIMARY KEY, -- note ✓\n v)' },
    { type: "index", name: "i", tblName: "t", sql: "CREATE INDEX i ON t (v DESC)" },
    { type: "view", name: "old", tblName: "old", sql: null },
    { type: "trigger", name: "tr", tblName: "t", sql: "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END" },
  ],
};

test("a schema message round-trips with its SQL text byte for byte", () => {
  const data = encodeSchemaMessage(message);
  assert.ok(isSchemaMessage(data));
  assert.deepEqual(decodeSchemaMessage(data), message);
});

test("a row batch reader refuses a schema message, and a schema reader a row batch (so either is parked, not misread)", () => {
  assert.throws(
    () => decodeBatch(encodeSchemaMessage(message)),
    (err: unknown) => err instanceof DecodeError && /schema message/.test(err.message),
  );
  assert.throws(() => decodeSchemaMessage(Buffer.from("not marmot")), DecodeError);
});

test("truncated, trailing and unknown contents are refused with what is wrong", () => {
  const data = encodeSchemaMessage(message);
  assert.throws(() => decodeSchemaMessage(data.subarray(0, data.length - 3)), /truncated/);
  assert.throws(() => decodeSchemaMessage(Buffer.concat([data, Buffer.from([0])])), /trailing bytes/);
  const badType = Buffer.from(encodeSchemaMessage({ origin: "o", id: 1, changes: [{ type: "view", name: "v", tblName: "v", sql: null }] }));
  badType[6 + 2 + 1 + 1] = 9; // origin "o" (2 bytes), id, count, then the type
  assert.throws(() => decodeSchemaMessage(badType), /unknown type 9/);
  const flags = Buffer.from(data);
  flags[5] = 4 | 1;
  assert.throws(() => decodeSchemaMessage(flags), /no other flag/);
});

test("RENAME COLUMN is told apart from other table changes by the text alone", () => {
  const before = 'CREATE TABLE t (id INTEGER PRIMARY KEY, "my col" TEXT CHECK ("my col" <> \'\'), n)';
  assert.deepEqual(
    renamedColumns(
      before,
      'CREATE TABLE t (id INTEGER PRIMARY KEY, "new name" TEXT CHECK ("new name" <> \'\'), n)',
      ["id", "my col", "n"],
      ["id", "new name", "n"],
    ),
    new Map([["new name", "my col"]]),
  );
  assert.deepEqual(renamedColumns(before, before.replace("TABLE t", 'TABLE "t"'), ["id", "my col", "n"], ["id", "my col", "n"]), new Map());
  // a dropped and an added column are no rename, even where the token counts happen to agree
  assert.equal(renamedColumns("CREATE TABLE t (a TEXT, b)", "CREATE TABLE t (a TEXT, b, c)", ["a", "b"], ["a", "b", "c"]), undefined);
  assert.equal(renamedColumns("CREATE TABLE t (a TEXT, b INT)", "CREATE TABLE t (a TEXT, b TEXT)", ["a", "b"], ["a", "b"]), undefined);
  // two names for one column are no rename either
  assert.equal(renamedColumns("CREATE TABLE t (a, b CHECK (a > b))", "CREATE TABLE t (x, b CHECK (y > b))", ["a", "b"], ["x", "b"]), undefined);
});

test("a column added at the end is told apart from other table changes", () => {
  const before = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)";
  assert.ok(isColumnAppend(before, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, w INTEGER DEFAULT 0)"));
  assert.ok(!isColumnAppend(before, "CREATE TABLE t (id INTEGER PRIMARY KEY, w TEXT)"));
  assert.ok(!isColumnAppend(before, "CREATE TABLE t (id INTEGER PRIMARY KEY)"));
});
