// Schema changes replicate: migrations while marmot runs, through bin/marmot on three nodes with the sqlite3 CLI as
// the app. Every kind of statement on one node, the same migration on every node, conflicting changes, a crash, and
// -cleanup after.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { runCleanup, TestCluster, waitFor } from "../helpers/marmot.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3, sqlite3Async } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA = `
CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, legacy TEXT, year INTEGER);
CREATE TABLE shelf (code TEXT PRIMARY KEY, label TEXT) WITHOUT ROWID;
INSERT INTO Books VALUES (1, 'Emma', 'old', 1815), (2, 'Persuasion', 'old', 1817);
`;

/** An app's trigger that writes: it runs where the app writes, and its effect travels as rows. */
const AUDIT_TRIGGER =
  "CREATE TRIGGER books_audit AFTER UPDATE OF title ON Books BEGIN INSERT INTO audit (book, title) VALUES (NEW.id, NEW.title); END";

/** The user's part of sqlite_schema, as the CLI prints it: marmot's objects and SQLite's own left out. */
const USER_SCHEMA_SQL =
  "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE substr(name, 1, 8) <> '__marmot' AND substr(tbl_name, 1, 8) <> '__marmot' " +
  "AND name NOT LIKE 'sqlite%' ORDER BY type, name";

function userSchema(path: string): string {
  return sqlite3(path, USER_SCHEMA_SQL);
}

function userTables(path: string): string[] {
  return sqlite3(
    path,
    "SELECT name FROM sqlite_schema WHERE type = 'table' AND substr(name, 1, 8) <> '__marmot' AND name NOT LIKE 'sqlite%' ORDER BY name",
  )
    .split("\n")
    .filter((name) => name !== "");
}

/** Every node holds node 1's user schema, text for text, and the same rows in every user table. */
async function waitSameEverywhere(cluster: TestCluster, timeoutMs = 90_000): Promise<void> {
  const first = cluster.node(1).spec.dbPath;
  await waitFor(
    () => cluster.nodes.every((n) => userSchema(n.spec.dbPath) === userSchema(first)),
    timeoutMs,
    () =>
      `the same user schema on every node:\n${cluster.nodes.map((n) => `--- node ${n.spec.id}\n${userSchema(n.spec.dbPath)}\n${n.tail(10)}`).join("\n")}`,
  );
  await cluster.waitConverged(userTables(first), timeoutMs);
}

/** Wait until node `id` has table `table` (created on another node), then write into it there. */
async function writeWhenThere(cluster: TestCluster, id: number, table: string, sql: string): Promise<void> {
  const db = cluster.node(id).spec.dbPath;
  await waitFor(
    () => userTables(db).includes(table),
    60_000,
    () => `table ${table} on node ${id}:\n${cluster.node(id).tail(20)}`,
  );
  await sqlite3Async(db, sql);
}

describe("schema changes travel between three nodes", () => {
  let cluster: TestCluster;
  after(async () => {
    await cluster?.stopAll();
  });

  test("start three marmot processes", async () => {
    cluster = await TestCluster.create({ schema: SCHEMA, replicas: 1, shards: 2 });
    await cluster.startAll();
  });

  test("every statement kind on node 1, with writes right after each (some from other nodes), ends the same everywhere", async () => {
    const db1 = cluster.node(1).spec.dbPath;
    // CREATE TABLE, and rows in the same breath; node 2 writes into it as soon as it has it.
    await sqlite3Async(
      db1,
      "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL); INSERT INTO authors VALUES (1, 'Austen'), (2, 'Brontë');",
    );
    await writeWhenThere(cluster, 2, "authors", "INSERT INTO authors VALUES (3, 'Eliot');");
    // A table without a declared key: its rows are keyed by rowid on every node.
    await sqlite3Async(db1, "CREATE TABLE notes (body TEXT, n INTEGER); INSERT INTO notes VALUES ('first', 1), ('second', 2);");
    await writeWhenThere(cluster, 3, "notes", "INSERT INTO notes VALUES ('from three', 3);");
    // CREATE INDEX / VIEW / TRIGGER (one that writes nothing, so it has the same effect wherever it runs).
    await sqlite3Async(
      db1,
      `CREATE INDEX books_by_year ON Books (year DESC);
       CREATE UNIQUE INDEX authors_name ON authors (name);
       CREATE VIEW recent AS SELECT id, title FROM Books WHERE year > 1810;
       CREATE TRIGGER no_anonymous BEFORE INSERT ON authors WHEN NEW.name = '' BEGIN SELECT RAISE(ABORT, 'a name, please'); END;
       INSERT INTO Books (id, title, legacy, year) VALUES (3, 'Middlemarch', 'x', 1871);`,
    );
    // ADD COLUMN, and a write of the new column right after, on the same node and on another one.
    await sqlite3Async(
      db1,
      "ALTER TABLE Books ADD COLUMN pages INTEGER DEFAULT 0; INSERT INTO Books (id, title, year, pages) VALUES (4, 'Sanditon', 1817, 271);",
    );
    await waitFor(
      () => sqlite3(cluster.node(3).spec.dbPath, "SELECT pages FROM Books WHERE id = 4") === "271\n",
      60_000,
      () => `the row written right after ADD COLUMN on node 3 with its new column:\n${cluster.node(3).tail(20)}`,
    );
    await sqlite3Async(cluster.node(3).spec.dbPath, "UPDATE Books SET pages = 474 WHERE id = 1;");
    // Node 1 writes row 1 next: it must have node 3's write first, or the two writes of the row are concurrent
    // (the later one wins the whole row).
    await waitFor(
      () => sqlite3(db1, "SELECT pages FROM Books WHERE id = 1") === "474\n",
      60_000,
      () => "node 3's update on node 1",
    );
    // RENAME COLUMN, then a write naming the new name.
    await sqlite3Async(db1, "ALTER TABLE Books RENAME COLUMN year TO published; UPDATE Books SET published = 1816 WHERE id = 1;");
    // DROP COLUMN, then a write.
    await sqlite3Async(db1, "ALTER TABLE Books DROP COLUMN legacy; INSERT INTO Books (id, title, published) VALUES (5, 'Shirley', 1849);");
    // RENAME TO, then writes into the table under its new name, here and from node 2.
    await sqlite3Async(db1, "ALTER TABLE shelf RENAME TO shelves; INSERT INTO shelves VALUES ('A1', 'fiction');");
    await writeWhenThere(cluster, 2, "shelves", "INSERT INTO shelves VALUES ('B2', 'poetry');");
    // The twelve-step rebuild: a CHECK and a changed type, values transformed on the way.
    await sqlite3Async(
      db1,
      `PRAGMA foreign_keys = OFF;
       BEGIN;
       CREATE TABLE new_authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL CHECK (length(name) > 0), born INTEGER);
       INSERT INTO new_authors (id, name) SELECT id, upper(name) FROM authors;
       DROP TABLE authors;
       ALTER TABLE new_authors RENAME TO authors;
       CREATE UNIQUE INDEX authors_name ON authors (name);
       COMMIT;
       INSERT INTO authors VALUES (4, 'GASKELL', 1810);`,
    );
    // DROP INDEX / VIEW / TRIGGER / TABLE, with writes after.
    await sqlite3Async(
      db1,
      `DROP INDEX books_by_year; DROP VIEW recent; CREATE TABLE scratch (k INTEGER PRIMARY KEY); INSERT INTO scratch VALUES (1);
       UPDATE Books SET title = 'Emma.' WHERE id = 1;`,
    );
    await writeWhenThere(cluster, 3, "scratch", "INSERT INTO scratch VALUES (2);");
    await sqlite3Async(db1, "DROP TRIGGER IF EXISTS no_anonymous; DROP TABLE scratch; INSERT INTO notes VALUES ('last', 4);");
    // A trigger that writes, made on node 2, fired by writes on nodes 1 and 3 once they have it.
    await sqlite3Async(cluster.node(2).spec.dbPath, `CREATE TABLE audit (book INTEGER, title TEXT, PRIMARY KEY (book, title)); ${AUDIT_TRIGGER};`);
    for (const n of [1, 3]) {
      const db = cluster.node(n).spec.dbPath;
      await waitFor(
        () => sqlite3(db, "SELECT count(*) FROM sqlite_schema WHERE name = 'books_audit'") === "1\n",
        60_000,
        () => `the trigger on node ${n}`,
      );
      await sqlite3Async(db, `UPDATE Books SET title = title || ' (${n})' WHERE id = ${n};`);
    }

    await waitSameEverywhere(cluster);
    const schema = userSchema(db1);
    assert.match(schema, /CREATE TABLE Books \(id INTEGER PRIMARY KEY, title TEXT NOT NULL, published INTEGER, pages INTEGER DEFAULT 0\)/);
    assert.doesNotMatch(schema, /scratch|recent|books_by_year|no_anonymous/);
    assert.match(schema, /CREATE TABLE "shelves"/);
    for (const out of cluster.query("SELECT id, name, born FROM authors ORDER BY id"))
      assert.equal(out, "1|AUSTEN|\n2|BRONTë|\n3|ELIOT|\n4|GASKELL|1810\n");
    for (const out of cluster.query("SELECT id, title, published, pages FROM Books ORDER BY id")) {
      assert.equal(out, "1|Emma. (1)|1816|474\n2|Persuasion|1817|0\n3|Middlemarch (3)|1871|0\n4|Sanditon|1817|271\n5|Shirley|1849|0\n");
    }
    // exactly one audit row per update, on every node
    for (const out of cluster.query("SELECT book, title FROM audit ORDER BY book")) assert.equal(out, "1|Emma. (1)\n3|Middlemarch (3)\n");
    for (const out of cluster.query("SELECT code, label FROM shelves ORDER BY code")) assert.equal(out, "A1|fiction\nB2|poetry\n");
    for (const out of cluster.query("SELECT rowid, body, n FROM notes ORDER BY rowid"))
      assert.equal(out, "1|first|1\n2|second|2\n3|from three|3\n4|last|4\n");
  });

  test("the same migration on all three nodes at once: no error, no duplicate, no lost row", async () => {
    const migration = (n: number) => `
      CREATE TABLE IF NOT EXISTS settings (k TEXT PRIMARY KEY, v TEXT);
      CREATE INDEX IF NOT EXISTS settings_v ON settings (v);
      INSERT OR IGNORE INTO settings VALUES ('schema', '2');
      INSERT INTO settings VALUES ('node-${n}', 'up');`;
    await Promise.all([1, 2, 3].map((n) => sqlite3Async(cluster.node(n).spec.dbPath, migration(n))));
    await waitSameEverywhere(cluster);
    for (const out of cluster.query("SELECT k, v FROM settings ORDER BY k")) assert.equal(out, "node-1|up\nnode-2|up\nnode-3|up\nschema|2\n");
    for (const out of cluster.query("SELECT count(*) FROM sqlite_schema WHERE name IN ('settings', 'settings_v')")) assert.equal(out, "2\n");
    // One after another too: a node whose app starts later runs it again over what it got, without an error.
    await sqlite3Async(cluster.node(2).spec.dbPath, migration(2).replace("INSERT INTO settings", "INSERT OR IGNORE INTO settings"));
    await waitSameEverywhere(cluster);
    for (const out of cluster.query("SELECT count(*) FROM settings")) assert.equal(out, "4\n");
  });

  test("two nodes changing one table at once end with the same schema everywhere", async () => {
    await Promise.all([
      sqlite3Async(
        cluster.node(1).spec.dbPath,
        "ALTER TABLE settings ADD COLUMN changed_by_one TEXT; INSERT INTO settings (k, v) VALUES ('one', '1');",
      ),
      sqlite3Async(
        cluster.node(2).spec.dbPath,
        "ALTER TABLE settings ADD COLUMN changed_by_two INTEGER; INSERT INTO settings (k, v) VALUES ('two', '2');",
      ),
    ]);
    await waitSameEverywhere(cluster);
    const settings = sqlite3(cluster.node(1).spec.dbPath, "SELECT sql FROM sqlite_schema WHERE name = 'settings'");
    assert.ok(/changed_by_one|changed_by_two/.test(settings), `one of the two changes won: ${settings}`);
    for (const out of cluster.query("SELECT k FROM settings WHERE k IN ('one', 'two') ORDER BY k")) assert.equal(out, "one\ntwo\n");
  });

  test("a marmot killed right after its app's migration sends it after its restart", async () => {
    const node1 = cluster.node(1);
    const rows = Array.from({ length: 2000 }, (_, i) => `(${i}, 'item ${i}')`).join(",");
    await sqlite3Async(node1.spec.dbPath, `CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT); INSERT INTO items VALUES ${rows};`);
    await waitSameEverywhere(cluster);
    await sqlite3Async(node1.spec.dbPath, "ALTER TABLE items RENAME COLUMN label TO name; UPDATE items SET name = name || '!' WHERE id % 3 = 0;");
    // Killed as soon as it noticed the change, while the message and the rows it logs again are on their way.
    await node1.waitForLog(/schema changed; sending the change/, 30_000);
    await node1.crash();
    await sqlite3Async(cluster.node(2).spec.dbPath, "INSERT INTO settings (k, v) VALUES ('while-one-was-down', 'x');");
    node1.start();
    await node1.waitRunning();
    await waitSameEverywhere(cluster, 120_000);
    for (const out of cluster.query("SELECT count(*), sum(name LIKE '%!') FROM items")) assert.equal(out, "2000|667\n");
  });

  test("-cleanup after the migrations leaves the user's schema exactly as the app made it", async () => {
    await cluster.stopAll();
    const before = cluster.nodes.map((n) => userSchema(n.spec.dbPath));
    for (const n of cluster.nodes) {
      const run = await runCleanup(n.spec.configPath);
      assert.equal(run.code, 0, run.output);
    }
    for (const [i, n] of cluster.nodes.entries()) {
      // The app's trigger is back as the app wrote it; everything else is as it was.
      const appText = (schema: string) => schema.replace(/^trigger\|books_audit\|Books\|[\s\S]*?END$/m, `trigger|books_audit|Books|${AUDIT_TRIGGER}`);
      assert.equal(userSchema(n.spec.dbPath), appText(before[i]!));
      assert.equal(sqlite3(n.spec.dbPath, "SELECT sql FROM sqlite_schema WHERE name = 'books_audit'"), `${AUDIT_TRIGGER}\n`);
      assert.equal(sqlite3(n.spec.dbPath, "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_\\_marmot%' ESCAPE '\\'"), "0\n");
    }
    assert.equal(before[1], before[0]);
    assert.equal(before[2], before[0]);
  });

  test("a start after -cleanup takes the database's schema as it is, not the schema stream's history", async () => {
    const before = cluster.nodes.map((n) => userSchema(n.spec.dbPath));
    await cluster.startAll();
    for (const [i, n] of cluster.nodes.entries()) {
      assert.match(n.output, /first start on this database: its schema is taken as it is/);
      assert.doesNotMatch(n.output, /applied a schema change of another node/);
      // the app's trigger is guarded again; everything else is as the app left it
      const unguarded = (schema: string) => schema.replace(/^trigger\|books_audit\|[\s\S]*?END$/m, "");
      assert.equal(unguarded(userSchema(n.spec.dbPath)), unguarded(before[i]!));
    }
    // A schema change made now travels as before.
    await sqlite3Async(cluster.node(1).spec.dbPath, "CREATE INDEX settings_k_v ON settings (k, v);");
    await waitFor(
      () => cluster.nodes.every((n) => sqlite3(n.spec.dbPath, "SELECT count(*) FROM sqlite_schema WHERE name = 'settings_k_v'") === "1\n"),
      60_000,
      () => "the index on every node",
    );
  });
});
