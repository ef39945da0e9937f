// An app's own trigger fires once per write, on the node the app wrote on, with two nodes writing at once; and
// -cleanup gives the app its trigger's text back exactly.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { runCleanup, TestCluster, waitFor } from "../helpers/marmot.js";
import { startNatsServer } from "../helpers/nats.js";
import { useProcessCleanup } from "../helpers/processes.js";
import { sqlite3, sqlite3Async } from "../helpers/sqlite.js";

useProcessCleanup();

const TRIGGER =
  "CREATE TRIGGER audit_books /* one audit row per book written */\n" +
  "  AFTER INSERT ON Books FOR EACH ROW WHEN NEW.title NOT LIKE 'draft%'\n" +
  "BEGIN\n  INSERT INTO audit (book_id, what) VALUES (NEW.id, 'inserted ' || NEW.title);\nEND";
const SCHEMA =
  "CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT NOT NULL);" +
  // A random key per audit row: rows made on different nodes never clash, so any extra firing shows.
  "CREATE TABLE audit (id TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(16)))), book_id INTEGER NOT NULL, what TEXT);" +
  `${TRIGGER};`;

describe("the app's own triggers", () => {
  test("two nodes writing at once: one audit row per written book on every node, identical by sqldiff; -cleanup restores the trigger's text", async () => {
    const server = await startNatsServer();
    after(() => server.stop());
    const cluster = await TestCluster.create({ size: 2, schema: SCHEMA, natsUrls: [server.url] });
    after(() => cluster.stopAll());
    const original = sqlite3(cluster.node(1).spec.dbPath, "SELECT sql FROM sqlite_master WHERE name = 'audit_books';");
    await cluster.startAll();
    const [db1, db2] = cluster.nodes.map((n) => n.spec.dbPath) as [string, string];

    const writes = (from: number) => {
      const statements: string[] = [];
      for (let i = from; i < from + 150; i++) statements.push(`INSERT INTO Books VALUES (${i}, '${i % 10 === 0 ? "draft" : "book"} ${i}');`);
      return statements.join("\n");
    };
    await Promise.all([sqlite3Async(db1, writes(1)), sqlite3Async(db2, writes(1001))]);
    await waitFor(
      () => sqlite3(db1, "SELECT count(*) FROM Books;").trim() === "300" && sqlite3(db2, "SELECT count(*) FROM Books;").trim() === "300",
      90_000,
      () => `both nodes to hold 300 books: ${cluster.query("SELECT count(*) FROM Books;").join(", ")}`,
    );
    await cluster.waitConverged(["Books", "audit"], 90_000);
    for (const db of [db1, db2]) {
      assert.equal(sqlite3(db, "SELECT count(*) FROM audit;").trim(), "270", "one audit row per book that is not a draft");
      assert.equal(sqlite3(db, "SELECT count(*) FROM (SELECT book_id FROM audit GROUP BY book_id HAVING count(*) > 1);").trim(), "0");
      assert.equal(sqlite3(db, "SELECT count(*) FROM Books WHERE title NOT LIKE 'draft%' AND id NOT IN (SELECT book_id FROM audit);").trim(), "0");
    }
    await cluster.stopAll();

    for (const node of cluster.nodes) {
      const run = await runCleanup(node.spec.configPath);
      assert.equal(run.code, 0, run.output);
      assert.equal(sqlite3(node.spec.dbPath, "SELECT sql FROM sqlite_master WHERE name = 'audit_books';"), original);
      assert.equal(sqlite3(node.spec.dbPath, "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_\\_marmot%' ESCAPE '\\';").trim(), "0");
    }
    // The trigger is the app's again: it fires for every insert, as before marmot.
    sqlite3(db1, "INSERT INTO Books VALUES (5000, 'after cleanup');");
    assert.equal(sqlite3(db1, "SELECT count(*) FROM audit WHERE book_id = 5000;").trim(), "1");
  });
});
