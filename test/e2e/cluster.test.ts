// Three real marmot processes on an embedded clustered NATS: apps write on every node at once, and afterwards
// sqldiff finds no difference between any two databases.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { TestCluster } from "../helpers/marmot.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3, sqlite3Async } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA = `
CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author TEXT NOT NULL, publication_year INTEGER);
CREATE TABLE ratings (user TEXT NOT NULL, book INTEGER NOT NULL, stars REAL, PRIMARY KEY (user, book));
CREATE TABLE notes (body TEXT, tag TEXT);
CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE works (id INTEGER PRIMARY KEY, author_id INTEGER REFERENCES authors(id) ON DELETE CASCADE, title TEXT);
CREATE TABLE vals (id INTEGER PRIMARY KEY, v);
`;
const TABLES = ["Books", "ratings", "notes", "kv", "authors", "works", "vals"];

/** A transaction of many rows, as an app's batch job would write it. */
function bulkInsert(node: number, count: number): string {
  const rows: string[] = [];
  for (let i = 0; i < count; i++) rows.push(`(${node * 100_000 + i}, 'title ${node}-${i}', 'author ${i % 17}', ${1900 + (i % 120)})`);
  return `BEGIN; INSERT INTO Books (id, title, author, publication_year) VALUES ${rows.join(",")}; COMMIT;`;
}

function mixedWrites(node: number): string {
  return `
    PRAGMA trusted_schema = ${node % 2};
    INSERT INTO ratings VALUES ('user-${node}', 1, ${node}.5), ('shared', 7, ${node}.25)
      ON CONFLICT (user, book) DO UPDATE SET stars = excluded.stars;
    INSERT INTO notes (body, tag) VALUES ('note from ${node}', 'n${node}');
    INSERT INTO kv VALUES ('hot', 'node ${node}') ON CONFLICT (k) DO UPDATE SET v = excluded.v;
    INSERT INTO kv VALUES ('mine-${node}', x'00ff${node.toString(16).padStart(2, "0")}');
    UPDATE Books SET title = 'updated on ${node}' WHERE id = ${node * 100_000 + 1};
    DELETE FROM Books WHERE id = ${node * 100_000 + 2};
    UPDATE Books SET id = ${node * 100_000 + 99_999} WHERE id = ${node * 100_000 + 3};
  `;
}

for (const replicas of [3, 1]) {
  describe(`three nodes, R${replicas} streams`, () => {
    let cluster: TestCluster;
    after(async () => {
      await cluster?.stopAll();
    });

    test("start three marmot processes with an embedded NATS cluster", async () => {
      cluster = await TestCluster.create({ schema: SCHEMA, replicas, shards: replicas === 3 ? 4 : 2 });
      await cluster.startAll();
    });

    test("concurrent inserts, updates, deletes, key changes and big transactions on every node converge", async () => {
      await Promise.all([1, 2, 3].map((n) => sqlite3Async(cluster.node(n).spec.dbPath, bulkInsert(n, n === 1 ? 5000 : 500))));
      await Promise.all([1, 2, 3].map((n) => sqlite3Async(cluster.node(n).spec.dbPath, mixedWrites(n))));
      await cluster.waitConverged(TABLES, 90_000);

      for (const out of cluster.query("SELECT count(*) FROM Books")) assert.equal(out.trim(), String(5000 + 500 + 500 - 3));
      for (const n of [1, 2, 3]) {
        const base = n * 100_000;
        for (const out of cluster.query(
          `SELECT id, title FROM Books WHERE id IN (${base + 1}, ${base + 2}, ${base + 3}, ${base + 99_999}) ORDER BY id`,
        )) {
          // the key change left no copy of the old row on any node
          assert.equal(out, `${base + 1}|updated on ${n}\n${base + 99_999}|title ${n}-3\n`);
        }
      }
      const hot = cluster.query("SELECT v FROM kv WHERE k = 'hot'");
      assert.ok(["node 1\n", "node 2\n", "node 3\n"].includes(hot[0]!), `hot key holds a value some node wrote: ${hot[0]}`);
      for (const out of cluster.query("SELECT count(*) FROM notes")) assert.ok(Number(out) >= 1);
    });

    test("a cascaded delete is replicated once and leaves no orphans", async () => {
      const db1 = cluster.node(1).spec.dbPath;
      sqlite3(
        db1,
        "INSERT INTO authors VALUES (1, 'Austen'); INSERT INTO works (author_id, title) VALUES (1, 'Emma'), (1, 'Persuasion'), (1, 'Sanditon');",
      );
      await cluster.waitConverged(["authors", "works"]);
      for (const out of cluster.query("SELECT count(*) FROM works")) assert.equal(out.trim(), "3");
      sqlite3(cluster.node(2).spec.dbPath, "PRAGMA foreign_keys = ON; DELETE FROM authors WHERE id = 1;");
      await cluster.waitConverged(["authors", "works"]);
      for (const out of cluster.query("SELECT (SELECT count(*) FROM authors) || '/' || (SELECT count(*) FROM works)"))
        assert.equal(out.trim(), "0/0");
    });

    test("every SQLite value arrives exactly: int64 extremes, REAL, TEXT, BLOB, NULL", async () => {
      const values = [
        "9223372036854775807",
        "-9223372036854775808",
        "9007199254740993",
        "-9007199254740993",
        "0.1",
        "1.0",
        "-0.0",
        "1e308",
        "'emoji 🦫, quotes '' \" and a newline\n'",
        "x''",
        "x'00010203ff'",
        "zeroblob(70000)",
        "NULL",
      ];
      const insert = values.map((v, i) => `INSERT INTO vals VALUES (${i + 1}, ${v});`).join("\n");
      sqlite3(cluster.node(2).spec.dbPath, insert);
      await cluster.waitConverged(["vals"]);
      const outputs = cluster.query("SELECT id, typeof(v), quote(v) FROM vals ORDER BY id");
      assert.equal(outputs[0], outputs[1]);
      assert.equal(outputs[0], outputs[2]);
      assert.match(outputs[2]!, /^1\|integer\|9223372036854775807$/m);
      assert.match(outputs[2]!, /^2\|integer\|-9223372036854775808$/m);
      assert.match(outputs[2]!, /^3\|integer\|9007199254740993$/m);
      assert.match(outputs[2]!, /^6\|real\|1\.0$/m);
      assert.match(outputs[2]!, /^11\|blob\|X'00010203FF'$/m);
      assert.match(outputs[2]!, /^13\|null\|NULL$/m);
    });

    test("a table created while marmot runs is captured from then on, rows written before its triggers included", async () => {
      // The migration runs on every node; node 1 writes into the new table in the same breath.
      const ddl = "CREATE TABLE IF NOT EXISTS tags (id INTEGER PRIMARY KEY, name TEXT NOT NULL);";
      sqlite3(cluster.node(1).spec.dbPath, `${ddl} INSERT INTO tags (id, name) VALUES (1, 'early'), (2, 'bird');`);
      sqlite3(cluster.node(2).spec.dbPath, ddl);
      sqlite3(cluster.node(3).spec.dbPath, ddl);
      await cluster.waitConverged(["tags"]);
      sqlite3(cluster.node(3).spec.dbPath, "INSERT INTO tags (id, name) VALUES (3, 'later'); UPDATE tags SET name = 'worm' WHERE id = 2;");
      await cluster.waitConverged(["tags"]);
      for (const out of cluster.query("SELECT group_concat(name, ',') FROM (SELECT name FROM tags ORDER BY id)"))
        assert.equal(out.trim(), "early,worm,later");
    });

    test("SIGTERM stops every node cleanly, nats-server processes included", async () => {
      const codes = await Promise.all(cluster.nodes.map((n) => n.stop()));
      assert.deepEqual(codes, [0, 0, 0]);
    });
  });
}
