// The app's migrations never fail because marmot runs, and the rows written right after each one replicate with
// all their columns (the migration reaches the other node through the schema stream).

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { join } from "node:path";
import { runCleanup, TestCluster, waitFor } from "../helpers/marmot.js";
import { startNatsServer } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { createDb, sqldiff, sqlite3, tempDir } from "../helpers/sqlite.js";

useProcessCleanup();

const SCHEMA =
  "CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, legacy TEXT, n INTEGER);" +
  "CREATE TABLE scratch (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE shelf_log (book_id INTEGER PRIMARY KEY, shelf TEXT);";

describe("the app's migrations while marmot runs", () => {
  test("DROP COLUMN, RENAME COLUMN (also of the key), ADD COLUMN, DROP TABLE, the twelve-step rebuild and a new trigger all work; rows written right after replicate whole; -cleanup leaves the app's schema", async () => {
    const server = await startNatsServer();
    after(() => server.stop());
    const cluster = await TestCluster.create({ size: 2, schema: SCHEMA, natsUrls: [server.url] });
    after(() => cluster.stopAll());
    await cluster.startAll();
    const [db1, db2] = cluster.nodes.map((n) => n.spec.dbPath) as [string, string];
    const rows = (db: string) => sqlite3(db, "SELECT * FROM Books ORDER BY 1;");
    /** The migration and the writes right after it on node 1, in one app session; node 2 gets both from marmot. */
    /** Everything node 1's app ran (and node 2's rows it received), to run on a copy that never saw marmot. */
    const history: string[] = [];
    const migrate = async (ddl: string, writes: string, expectRow: string) => {
      // sqlite3() throws when the CLI reports an error: every statement of the app succeeded.
      sqlite3(db1, `${ddl}\n${writes}`);
      history.push(`${ddl}\n${writes}`);
      await waitFor(
        () => rows(db2) === rows(db1) && rows(db1).includes(expectRow),
        60_000,
        () =>
          `node 2 to have node 1's rows after "${ddl}":\nnode 1:\n${rows(db1)}\nnode 2:\n${rows(db2)}\n${cluster.node(1).tail(10)}\n${cluster.node(2).tail(10)}`,
      );
      await cluster.waitConverged(["Books"]);
    };

    sqlite3(db1, "INSERT INTO Books VALUES (1, 'one', 'old', 10), (2, 'two', 'old', 20); INSERT INTO scratch VALUES (1, 's');");
    history.push("INSERT INTO Books VALUES (1, 'one', 'old', 10), (2, 'two', 'old', 20); INSERT INTO scratch VALUES (1, 's');");
    await waitFor(
      () => rows(db2) === rows(db1),
      60_000,
      () => `the first rows on node 2:\n${rows(db2)}`,
    );

    await migrate(
      "ALTER TABLE Books DROP COLUMN legacy;",
      "INSERT INTO Books VALUES (3, 'after drop', 30); UPDATE Books SET n = 11 WHERE id = 1;",
      "3|after drop|30",
    );
    await migrate(
      "ALTER TABLE Books RENAME COLUMN n TO pages;",
      "INSERT INTO Books (id, title, pages) VALUES (4, 'after rename', 40);",
      "4|after rename|40",
    );
    await migrate(
      "ALTER TABLE Books RENAME COLUMN id TO book_id;",
      "INSERT INTO Books (book_id, title, pages) VALUES (5, 'after key rename', 50); UPDATE Books SET title = 'two!' WHERE book_id = 2; DELETE FROM Books WHERE book_id = 3;",
      "5|after key rename|50",
    );
    await migrate(
      "ALTER TABLE Books ADD COLUMN isbn TEXT;",
      "INSERT INTO Books VALUES (6, 'after add', 60, 'isbn-6'); UPDATE Books SET isbn = 'isbn-1' WHERE book_id = 1;",
      "6|after add|60|isbn-6",
    );
    await migrate("DROP TABLE scratch;", "INSERT INTO Books VALUES (7, 'after drop table', 70, 'isbn-7');", "7|after drop table|70|isbn-7");
    // SQLite's recommended way for any other change: a new table, the rows copied, the old one dropped, the new renamed.
    await migrate(
      "BEGIN; CREATE TABLE Books_new (book_id INTEGER PRIMARY KEY, title TEXT NOT NULL, pages INTEGER CHECK (pages >= 0), isbn TEXT, shelf TEXT DEFAULT 'A');" +
        "INSERT INTO Books_new (book_id, title, pages, isbn) SELECT book_id, title, pages, isbn FROM Books;" +
        "DROP TABLE Books; ALTER TABLE Books_new RENAME TO Books; COMMIT;",
      "INSERT INTO Books VALUES (8, 'after rebuild', 80, 'isbn-8', 'B'); UPDATE Books SET shelf = 'C' WHERE book_id = 1;",
      "8|after rebuild|80|isbn-8|B",
    );
    assert.equal(
      rows(db2),
      [
        "1|one|11|isbn-1|C",
        "2|two!|20||A",
        "4|after rename|40||A",
        "5|after key rename|50||A",
        "6|after add|60|isbn-6|A",
        "7|after drop table|70|isbn-7|A",
        "8|after rebuild|80|isbn-8|B",
        "",
      ].join("\n"),
    );
    // The app's own trigger, made while marmot runs: it fires where the app writes, its row travels.
    await migrate(
      "CREATE TRIGGER books_shelf /* keep the shelf log */ AFTER INSERT ON Books WHEN NEW.shelf <> 'Z'\nBEGIN INSERT INTO shelf_log VALUES (NEW.book_id, NEW.shelf); END;",
      "INSERT INTO Books VALUES (10, 'with trigger', 100, NULL, 'E');",
      "10|with trigger|100||E",
    );
    // Marmot's own triggers follow the new table on both nodes; writes keep flowing.
    sqlite3(db2, "INSERT INTO Books VALUES (9, 'from node 2', 90, NULL, 'D');");
    history.push("INSERT INTO Books VALUES (9, 'from node 2', 90, NULL, 'D');");
    await waitFor(
      () => rows(db1).includes("9|from node 2|90||D"),
      60_000,
      () => `node 2's row on node 1:\n${rows(db1)}`,
    );
    await cluster.waitConverged(["Books", "shelf_log"]);
    assert.equal(sqlite3(db1, "SELECT * FROM shelf_log ORDER BY 1;"), "9|D\n10|E\n");
    for (const node of cluster.nodes) assert.doesNotMatch(node.tail(400), /"level":"(error|fatal)"/);

    // -cleanup after the migrations: the schema is exactly what the app made, as on a copy that never saw marmot.
    await cluster.stopAll();
    const run = await runCleanup(cluster.node(1).spec.configPath);
    assert.equal(run.code, 0, run.output);
    const pristine = createDb(join(tempDir(), "pristine.sqlite"), SCHEMA);
    for (const sql of history) sqlite3(pristine, sql);
    const schema = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name;";
    assert.equal(sqlite3(db1, schema), sqlite3(pristine, schema));
    assert.equal(sqldiff(pristine, db1), "");
  });
});
