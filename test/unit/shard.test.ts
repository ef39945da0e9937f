// Shard hashing is stable (every node must agree) and spreads rows evenly.

import assert from "node:assert/strict";
import { test } from "node:test";
import { rowKeyBytes, shardOf } from "../../src/wire/shard.js";

test("the same row always lands on the same shard, on every node and release", () => {
  // Pinned values: a change here would split a row's history over two streams in a mixed-version cluster.
  const pinned = [shardOf(rowKeyBytes("Books", [1n]), 16), shardOf(rowKeyBytes("Books", ["a", 2n]), 16), shardOf(rowKeyBytes("x", [null]), 16)];
  assert.deepEqual(pinned, [5, 3, 5]);
});

test("the key's type matters: integer 1 and text '1' are different rows", () => {
  assert.notDeepEqual(rowKeyBytes("t", [1n]), rowKeyBytes("t", ["1"]));
  assert.notDeepEqual(rowKeyBytes("t", [1n]), rowKeyBytes("t1", []));
});

test("one shard takes everything", () => {
  for (let i = 0n; i < 100n; i++) assert.equal(shardOf(rowKeyBytes("t", [i]), 1), 1);
});

test("rows spread evenly over shards", () => {
  const shards = 8;
  const counts = new Array<number>(shards + 1).fill(0);
  for (let i = 0n; i < 80_000n; i++) counts[shardOf(rowKeyBytes("Books", [i]), shards)]!++;
  for (let s = 1; s <= shards; s++) assert.ok(counts[s]! > 8_500 && counts[s]! < 11_500, `shard ${s} got ${counts[s]}`);
});
