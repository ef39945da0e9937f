// The wire format carries every SQLite value exactly and refuses anything that is not a marmot batch.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { DecodeError } from "../../src/errors.js";
import { decodeBatch, decodeReference, encodeBatch, encodeReference, type ChangeBatch, type WireTable } from "../../src/wire/codec.js";
import type { SqlValue } from "../../src/wire/value.js";

const table: WireTable = { name: 't "quoted" ✓', columns: ["id", "v"], keyColumns: ["id"] };

const edgeValues: SqlValue[] = [
  null,
  0n,
  -1n,
  2n ** 31n - 1n,
  -(2n ** 31n),
  2n ** 31n,
  2n ** 53n + 1n,
  -(2n ** 53n) - 1n,
  9223372036854775807n,
  -9223372036854775808n,
  0.1,
  1.0,
  -0.0,
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  Infinity,
  -Infinity,
  "",
  "plain",
  "quotes ' \" and \\ and ; DROP TABLE x; --",
  "emoji 🦫 and 中文 and \u2028 and tab\tnewline\n",
  Buffer.alloc(0),
  Buffer.from([0, 1, 2, 255, 0]),
  Buffer.alloc(100_000, 7),
];

function roundTrip(batch: ChangeBatch, compress: boolean): ChangeBatch {
  return decodeBatch(encodeBatch(batch, { compress }));
}

for (const compress of [false, true]) {
  test(`every SQLite value survives the round trip exactly (compress=${compress})`, () => {
    const batch: ChangeBatch = {
      origin: "18446744073709551615",
      changes: edgeValues.map((v, i) => ({ table, op: "upsert" as const, changeId: i + 1, values: [BigInt(i), v] })),
    };
    const back = roundTrip(batch, compress);
    assert.equal(back.origin, batch.origin);
    assert.equal(back.changes.length, edgeValues.length);
    back.changes.forEach((c, i) => {
      const expected = edgeValues[i];
      const got = c.values[1];
      assert.equal(c.changeId, i + 1);
      assert.equal(c.table.name, table.name);
      if (typeof expected === "number") {
        assert.equal(typeof got, "number", `value ${i} stays REAL`);
        assert.ok(Object.is(got, expected), `value ${i}: ${String(got)} is ${String(expected)}`);
      } else if (expected instanceof Uint8Array) {
        assert.ok(got instanceof Uint8Array);
        assert.deepEqual(Buffer.from(got as Uint8Array), Buffer.from(expected));
      } else {
        assert.equal(got, expected);
      }
    });
  });
}

test("NaN stays a REAL NaN", () => {
  const back = roundTrip({ origin: "1", changes: [{ table, op: "upsert", changeId: 1, values: [1n, NaN] }] }, false);
  assert.ok(Number.isNaN(back.changes[0]!.values[1]));
});

test("deletes carry only the key", () => {
  const back = roundTrip({ origin: "1", changes: [{ table, op: "delete", changeId: 9, values: [42n] }] }, false);
  assert.deepEqual(back.changes[0]!.values, [42n]);
  assert.equal(back.changes[0]!.op, "delete");
});

test("a change with the wrong number of values is refused when encoding", () => {
  assert.throws(() => encodeBatch({ origin: "1", changes: [{ table, op: "upsert", changeId: 1, values: [1n] }] }));
});

test("compression shrinks repetitive batches and is flagged", () => {
  const changes = Array.from({ length: 500 }, (_, i) => ({
    table,
    op: "upsert" as const,
    changeId: i + 1,
    values: [BigInt(i), "same text ".repeat(10)],
  }));
  const plain = encodeBatch({ origin: "1", changes });
  const packed = encodeBatch({ origin: "1", changes }, { compress: true });
  assert.ok(packed.length < plain.length / 3, `${packed.length} < ${plain.length}/3`);
  assert.equal(decodeBatch(packed).changes.length, 500);
});

test("garbage, truncated and tampered payloads raise DecodeError, never anything else", () => {
  const good = encodeBatch({ origin: "7", changes: [{ table, op: "upsert", changeId: 3, values: [5n, "hello"] }] });
  const cases: Buffer[] = [
    Buffer.alloc(0),
    Buffer.from("hello world"),
    Buffer.from("MRMT"),
    Buffer.concat([good.subarray(0, 4), Buffer.from([99, 0])]),
    Buffer.concat([good.subarray(0, 5), Buffer.from([0x80])]),
    Buffer.concat([good, Buffer.from([1, 2, 3])]),
  ];
  for (let cut = 6; cut < good.length; cut++) cases.push(good.subarray(0, cut));
  // Flip every byte of the body in turn: each result decodes to something valid or fails with DecodeError.
  for (let i = 6; i < good.length; i++) {
    const tampered = Buffer.from(good);
    tampered[i] = tampered[i]! ^ 0xff;
    cases.push(tampered);
  }
  let refused = 0;
  for (const payload of cases) {
    try {
      decodeBatch(payload);
    } catch (err) {
      assert.ok(err instanceof DecodeError, `expected DecodeError, got ${(err as Error).name}: ${(err as Error).message}`);
      refused++;
    }
  }
  assert.ok(refused >= cases.length - 20, `${refused} of ${cases.length} refused`);
});

test("invalid UTF-8 in a name is a DecodeError", () => {
  const good = encodeBatch({ origin: "ab", changes: [] });
  const bad = Buffer.from(good);
  bad[7] = 0xff; // first byte of the origin text
  assert.throws(() => decodeBatch(bad), DecodeError);
});

test("a large-change reference round-trips, and a batch is never taken for one", () => {
  const ref = { object: "1-e1-abc", size: 52_428_900, sha256: Buffer.alloc(32, 9) };
  const encoded = encodeReference(ref);
  assert.ok(encoded.length < 100, "a reference is a small message");
  assert.deepEqual(decodeReference(encoded), ref);
  assert.equal(decodeReference(encodeBatch({ origin: "1/e", changes: [] })), undefined);
  assert.equal(decodeReference(Buffer.from("not marmot at all")), undefined);
});

test("a reference decoded as a batch is refused with the object it names, not taken for changes", () => {
  const encoded = encodeReference({ object: "1-e1-abc", size: 10, sha256: Buffer.alloc(32) });
  assert.throws(
    () => decodeBatch(encoded),
    (err: unknown) => err instanceof DecodeError && /large object "1-e1-abc" \(10 bytes\)/.test(err.message),
  );
});

test("a malformed reference is refused, never read as a reference to something else", () => {
  const good = encodeReference({ object: "x", size: 10, sha256: Buffer.alloc(32, 1) });
  const isDecodeError = (err: unknown) => err instanceof DecodeError;
  // truncated digest
  assert.throws(() => decodeReference(good.subarray(0, good.length - 1)), isDecodeError);
  // trailing bytes between size and digest
  const trailing = Buffer.concat([good.subarray(0, good.length - 32), Buffer.from([0]), good.subarray(good.length - 32)]);
  assert.throws(() => decodeReference(trailing), isDecodeError);
  // both flags: a reference is never compressed
  const both = Buffer.from(good);
  both[5] = 3;
  assert.throws(
    () => decodeBatch(both),
    (err: unknown) => isDecodeError(err) && /cannot be compressed/.test((err as Error).message),
  );
  assert.equal(decodeReference(both), undefined);
  // an unknown flag is still refused (bit 2 marks a schema message, which no batch reader takes either)
  const unknown = Buffer.from(good);
  unknown[5] = 8;
  assert.throws(
    () => decodeBatch(unknown),
    (err: unknown) => isDecodeError(err) && /unknown batch flags 0x8/.test((err as Error).message),
  );
  unknown[5] = 4;
  assert.throws(
    () => decodeBatch(unknown),
    (err: unknown) => isDecodeError(err) && /schema message/.test((err as Error).message),
  );
  // empty object name
  assert.throws(() => decodeReference(encodeReference({ object: "", size: 1, sha256: Buffer.alloc(32) })), isDecodeError);
});

test("a large body is compressed when a sample of it compresses, sent as it is when not, and decodes exactly", () => {
  const table: WireTable = { name: "files", columns: ["id", "data"], keyColumns: ["id"] };
  const batchOf = (data: Buffer): ChangeBatch => ({ origin: "1/e", changes: [{ table, op: "upsert", changeId: 1, values: [1n, data] }] });
  const repetitive = Buffer.alloc(3 * 1024 * 1024, "abcdefgh");
  const packed = encodeBatch(batchOf(repetitive), { compress: true });
  assert.equal(packed[5], 1, "deflated");
  assert.ok(packed.length < repetitive.length / 10);
  assert.deepEqual(decodeBatch(packed).changes[0]!.values[1], repetitive);

  const random = randomBytes(3 * 1024 * 1024);
  const plain = encodeBatch(batchOf(random), { compress: true });
  assert.equal(plain[5], 0, "not deflated");
  assert.ok(plain.length < random.length + 64);
  assert.deepEqual(decodeBatch(plain).changes[0]!.values[1], random);
});
