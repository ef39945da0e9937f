// The app's own triggers get marmot's guard while marmot manages the file, and their exact text back at cleanup.

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { join } from "node:path";
import { silentLogger } from "../../src/log.js";
import { installCapture } from "../../src/sqlite/capture.js";
import { removeCapture } from "../../src/sqlite/cleanup.js";
import { APPLYING_TABLE } from "../../src/sqlite/names.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { quoteIdent } from "../../src/sqlite/quote.js";
import { guardedTriggerSql, triggerTargets } from "../../src/sqlite/user-triggers.js";
import { createDb, removeTempDirs, sqlite3, tempDir } from "../helpers/sqlite.js";

after(removeTempDirs);

const GUARD = 'NOT EXISTS (SELECT 1 FROM "__marmot__applying")';

describe("guarding the app's triggers", () => {
  it("puts the guard before BEGIN, or ANDs it with the trigger's own WHEN, whatever quotes and comments hold", () => {
    assert.equal(
      guardedTriggerSql("CREATE TRIGGER a AFTER INSERT ON t BEGIN SELECT 1; END"),
      `CREATE TRIGGER a AFTER INSERT ON t WHEN ${GUARD} BEGIN SELECT 1; END`,
    );
    assert.equal(
      guardedTriggerSql('CREATE TRIGGER "b" BEFORE UPDATE OF x, "on" ON main."when" FOR EACH ROW\nBEGIN SELECT 1; END'),
      `CREATE TRIGGER "b" BEFORE UPDATE OF x, "on" ON main."when" FOR EACH ROW\nWHEN ${GUARD} BEGIN SELECT 1; END`,
    );
    assert.equal(
      guardedTriggerSql("CREATE TRIGGER c AFTER DELETE ON [begin] FOR EACH ROW WHEN OLD.v = 'BEGIN' -- begin\n /* BEGIN */ BEGIN DELETE FROM x; END"),
      `CREATE TRIGGER c AFTER DELETE ON [begin] FOR EACH ROW WHEN (OLD.v = 'BEGIN') AND ${GUARD} -- begin\n /* BEGIN */ BEGIN DELETE FROM x; END`,
    );
    assert.equal(
      guardedTriggerSql("CREATE TRIGGER d AFTER INSERT ON t WHEN (SELECT count(*) FROM u WHERE u.k = 'it''s') > 0 OR NEW.a BEGIN SELECT 1; END"),
      `CREATE TRIGGER d AFTER INSERT ON t WHEN ((SELECT count(*) FROM u WHERE u.k = 'it''s') > 0 OR NEW.a) AND ${GUARD} BEGIN SELECT 1; END`,
    );
    assert.equal(guardedTriggerSql("CREATE TRIGGER broken"), undefined);
  });

  it("reads which tables a trigger's body writes into", () => {
    assert.deepEqual(
      triggerTargets(
        "CREATE TRIGGER t AFTER UPDATE ON a WHEN NEW.x IN (SELECT y FROM b) BEGIN " +
          'INSERT OR IGNORE INTO main."we""ird" VALUES (1); UPDATE OR REPLACE [c] SET v = 1; DELETE FROM d WHERE 0; ' +
          "INSERT INTO e VALUES (1) ON CONFLICT DO UPDATE SET v = 2; REPLACE INTO f VALUES (1); SELECT 'INSERT INTO g'; END",
      ),
      ['we"ird', "c", "d", "e", "f"],
    );
    assert.deepEqual(triggerTargets("CREATE TRIGGER v BEFORE INSERT ON a BEGIN SELECT RAISE(ABORT, 'no'); END"), []);
  });

  it("leaves alone a trigger that writes into a table marmot does not replicate: an FTS index must be kept on every node", () => {
    const path = createDb(
      join(tempDir(), "app.sqlite"),
      "CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT); CREATE TABLE local_stats (n INTEGER);" +
        "CREATE VIRTUAL TABLE docs_fts USING fts5(body, content='docs', content_rowid='id');" +
        "CREATE TRIGGER docs_ai AFTER INSERT ON docs BEGIN INSERT INTO docs_fts (rowid, body) VALUES (NEW.id, NEW.body); END;" +
        "CREATE TRIGGER docs_count AFTER INSERT ON docs BEGIN INSERT INTO local_stats VALUES (1); END;",
    );
    const db = openDatabase(path, silentLogger);
    try {
      installCapture(db, silentLogger, { exclude: ["local_stats"] });
      const sql = (name: string) => String(db.prepare("SELECT sql FROM sqlite_master WHERE name = ?").pluck(true).get(name));
      assert.doesNotMatch(sql("docs_ai"), /__marmot__applying/);
      assert.doesNotMatch(sql("docs_count"), /__marmot__applying/);
      // A row marmot applies is indexed on this node too.
      db.transaction(() => {
        db.prepare(`INSERT INTO ${quoteIdent(APPLYING_TABLE)} VALUES (1)`).run();
        db.prepare("INSERT INTO docs VALUES (1, 'marmots whistle')").run();
        db.prepare(`DELETE FROM ${quoteIdent(APPLYING_TABLE)}`).run();
      })();
      assert.equal(sqlite3(path, "SELECT rowid FROM docs_fts WHERE docs_fts MATCH 'whistle';").trim(), "1");
      // Once local_stats is replicated too, its trigger gets the guard; excluded again, the app's text comes back.
      installCapture(db, silentLogger);
      assert.match(sql("docs_count"), /__marmot__applying/);
      installCapture(db, silentLogger, { exclude: ["local_stats"] });
      assert.equal(sql("docs_count"), "CREATE TRIGGER docs_count AFTER INSERT ON docs BEGIN INSERT INTO local_stats VALUES (1); END");
    } finally {
      db.close();
    }
  });

  it("keeps a guarded trigger from firing on apply, lets it fire for the app, and cleanup restores its text byte for byte", () => {
    const trigger =
      "CREATE   TRIGGER  audit_books -- the app's own comment\n" +
      "  AFTER INSERT ON Books FOR EACH ROW WHEN NEW.title <> 'skip'\n" +
      "BEGIN\n  INSERT INTO audit (book_id) VALUES (NEW.id);\nEND";
    const path = createDb(
      join(tempDir(), "app.sqlite"),
      `CREATE TABLE Books (id INTEGER PRIMARY KEY, title TEXT); CREATE TABLE audit (book_id INTEGER); ${trigger};` +
        "CREATE VIEW v AS SELECT id FROM Books; CREATE TRIGGER v_insert INSTEAD OF INSERT ON v BEGIN INSERT INTO Books (id, title) VALUES (NEW.id, 'via view'); END;",
    );
    const original = sqlite3(path, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name;");
    const db = openDatabase(path, silentLogger);
    try {
      installCapture(db, silentLogger);
      const stored = db.prepare("SELECT sql FROM sqlite_master WHERE name = 'audit_books'").pluck(true).get() as string;
      assert.ok(stored.includes(`WHEN (NEW.title <> 'skip') AND ${GUARD}`), stored);
      // A second look changes nothing.
      const version = db.pragma("schema_version", { simple: true });
      installCapture(db, silentLogger);
      assert.equal(db.pragma("schema_version", { simple: true }), version);

      sqlite3(path, "INSERT INTO Books VALUES (1, 'by the app'), (2, 'skip'); INSERT INTO v VALUES (3);");
      db.transaction(() => {
        db.prepare(`INSERT INTO ${quoteIdent(APPLYING_TABLE)} VALUES (1)`).run();
        db.prepare("INSERT INTO Books VALUES (10, 'replicated')").run();
        db.prepare(`DELETE FROM ${quoteIdent(APPLYING_TABLE)}`).run();
      })();
      assert.equal(sqlite3(path, "SELECT group_concat(book_id) FROM audit;").trim(), "1,3");

      // The app makes a new trigger while marmot runs: guarded at the next look.
      sqlite3(path, "CREATE TRIGGER later AFTER DELETE ON Books BEGIN DELETE FROM audit WHERE book_id = OLD.id; END;");
      installCapture(db, silentLogger);
      assert.match(String(db.prepare("SELECT sql FROM sqlite_master WHERE name = 'later'").pluck(true).get()), /__marmot__applying/);

      const result = removeCapture(db, silentLogger);
      assert.deepEqual(result.userTriggers.sort(), ["audit_books", "later", "v_insert"]);
    } finally {
      db.close();
    }
    assert.equal(sqlite3(path, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name <> 'later' ORDER BY name;"), original);
    assert.equal(
      sqlite3(path, "SELECT sql FROM sqlite_master WHERE name = 'later';").trim(),
      "CREATE TRIGGER later AFTER DELETE ON Books BEGIN DELETE FROM audit WHERE book_id = OLD.id; END",
    );
    assert.equal(sqlite3(path, "SELECT count(*) FROM sqlite_master WHERE name LIKE '%marmot%';").trim(), "0");
  });
});
