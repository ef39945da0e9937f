// Digests of a table's rows per shard, on real SQLite files written by the sqlite3 CLI: equal for equal rows in any
// order, different for any different value, each row counted on its own shard, and the event loop kept free.

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import Database from "better-sqlite3";
import { digestTable, type ShardDigest } from "../../src/cluster/digest.js";
import { readSchema } from "../../src/sqlite/schema.js";
import { rowKeyBytes, shardOfRow } from "../../src/wire/shard.js";
import { createDb, removeTempDirs, sqlite3, tempDir } from "../helpers/sqlite.js";

after(removeTempDirs);

const SCHEMA = `
CREATE TABLE vals (id INTEGER PRIMARY KEY, v);
CREATE TABLE pairs (owner TEXT NOT NULL, slot INTEGER NOT NULL, v, PRIMARY KEY (owner, slot)) WITHOUT ROWID;
CREATE TABLE loose (a, b);
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE);
`;

const ROWS = [
  "INSERT INTO vals VALUES (1, 9223372036854775807), (2, -9223372036854775808), (3, 1.5), (4, 'text ✓'), (5, x'00ff'), (6, NULL), (7, -0.0), (8, 1);",
  "INSERT INTO pairs VALUES ('a', 1, 'x'), ('b', 2, 2.5), ('🦫', 3, NULL);",
  "INSERT INTO loose (rowid, a, b) VALUES (10, 'p', 1), (11, 'q', 2);",
  "INSERT INTO users VALUES (1, 'a@example.com'), (2, 'b@example.com'), (3, NULL);",
];

/** Digests of every table of a database the CLI wrote with `sql`, read as marmot reads them. */
async function digests(sql: string, shards = 4): Promise<Map<string, ShardDigest[]>> {
  const path = createDb(join(tempDir(), "app.sqlite"), SCHEMA);
  sqlite3(path, sql);
  const db = new Database(path, { readonly: true });
  db.defaultSafeIntegers(true);
  try {
    const out = new Map<string, ShardDigest[]>();
    for (const table of readSchema(db).tables) out.set(table.name, await digestTable(db, table, shards));
    return out;
  } finally {
    db.close();
  }
}

describe("table digests", () => {
  it("are equal for the same rows written in another order", async () => {
    const forward = await digests(ROWS.join("\n"));
    const backward = await digests(
      [...ROWS]
        .reverse()
        .join("\n")
        .replace("(1, 9223372036854775807), (2, -9223372036854775808)", "(2, -9223372036854775808), (1, 9223372036854775807)"),
    );
    assert.deepEqual(backward, forward);
    assert.equal(
      forward.get("vals")!.reduce((sum, d) => sum + d.rows, 0),
      8,
    );
  });

  it("differ when one value differs, even only in its storage class or the sign of a zero", async () => {
    const base = await digests(ROWS.join("\n"));
    for (const change of [
      "UPDATE vals SET v = 1.0 WHERE id = 8;",
      "UPDATE vals SET v = '1' WHERE id = 8;",
      "UPDATE vals SET v = x'31' WHERE id = 8;",
      "UPDATE vals SET v = 0.0 WHERE id = 7;",
      "UPDATE vals SET v = 9223372036854775806 WHERE id = 1;",
      "UPDATE pairs SET v = 'y' WHERE owner = 'a';",
      "UPDATE loose SET rowid = 12 WHERE rowid = 11;",
      "DELETE FROM users WHERE id = 3;",
    ]) {
      const changed = await digests(`${ROWS.join("\n")}\n${change}`);
      const table = /(?:UPDATE|FROM) (\w+)/.exec(change)![1]!;
      assert.notDeepEqual(changed.get(table), base.get(table), change);
      for (const [other, d] of base) if (other !== table) assert.deepEqual(changed.get(other), d, `${change} leaves ${other} alone`);
    }
  });

  it("count each row on the shard its changes travel on", async () => {
    const shards = 4;
    const d = await digests(ROWS.join("\n"), shards);
    const expected = new Array<number>(shards).fill(0);
    for (const id of [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n]) expected[shardOfRow("vals", rowKeyBytes("vals", [id]), shards, false) - 1]!++;
    assert.deepEqual(
      d.get("vals")!.map((s) => s.rows),
      expected,
    );
    const usersShard = shardOfRow("users", new Uint8Array(), shards, true);
    const onUsersShard = [1, 2, 3, 4].map((s) => (s === usersShard ? 3 : 0));
    assert.deepEqual(
      d.get("users")!.map((s) => s.rows),
      onUsersShard,
      "a table with a UNIQUE column sits on one shard",
    );
  });

  it("let the event loop run while a large table is read", async () => {
    const path = createDb(join(tempDir(), "big.sqlite"), "CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT);");
    sqlite3(path, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000) INSERT INTO big SELECT x, 'row ' || x FROM c;");
    const db = new Database(path, { readonly: true });
    db.defaultSafeIntegers(true);
    try {
      let turns = 0;
      const ticker = setInterval(() => turns++, 0);
      const [table] = readSchema(db).tables;
      const d = await digestTable(db, table!, 2);
      clearInterval(ticker);
      assert.equal(d[0]!.rows + d[1]!.rows, 50_000);
      assert.ok(turns > 0, "timers ran during the scan");
    } finally {
      db.close();
    }
  });
});
