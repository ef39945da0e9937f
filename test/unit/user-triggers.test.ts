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
import { guardedTriggerSql } from "../../src/sqlite/user-triggers.js";
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
    assert.equal(
      sqlite3(path, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name <> 'later' ORDER BY name;"),
      original,
    );
    assert.equal(
      sqlite3(path, "SELECT sql FROM sqlite_master WHERE name = 'later';").trim(),
      "CREATE TRIGGER later AFTER DELETE ON Books BEGIN DELETE FROM audit WHERE book_id = OLD.id; END",
    );
    assert.equal(sqlite3(path, "SELECT count(*) FROM sqlite_master WHERE name LIKE '%marmot%';").trim(), "0");
  });
});
