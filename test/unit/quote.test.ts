// quoteIdent/quoteLiteral against a real SQLite: any name a user can give a table or column must work in generated SQL.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { quoteIdent, quoteLiteral } from "../../src/sqlite/quote.js";

const AWKWARD_NAMES = [
  'we"ird',
  '"',
  '""',
  "with space",
  "  padded  ",
  "select",
  "from",
  "order",
  "table",
  "ünïcødé",
  "表格",
  "😀 emoji",
  "a'b",
  "[bracketed]",
  "`ticked`",
  "-- not a comment",
  "x); DROP TABLE victim; --",
  "new.line\nname",
  "",
];

describe("quoteIdent", () => {
  for (const name of AWKWARD_NAMES) {
    it(`round-trips ${JSON.stringify(name)} as a table and column name`, () => {
      const db = new Database(":memory:");
      db.defaultSafeIntegers(true);
      try {
        db.exec("CREATE TABLE victim (x)");
        const table = quoteIdent(name);
        const key = quoteIdent(name);
        const other = quoteIdent(`${name}_2`);
        db.exec(`CREATE TABLE ${table} (${key} INTEGER PRIMARY KEY, ${other} TEXT)`);
        db.prepare(`INSERT INTO ${table} (${key}, ${other}) VALUES (?, ?)`).run(7n, "seven");

        const row = db.prepare(`SELECT ${key} AS k, ${other} AS v FROM ${table} WHERE ${key} = ?`).get(7n);
        assert.deepEqual(row, { k: 7n, v: "seven" });

        const created = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?").get(name) as { name: string } | undefined;
        assert.equal(created?.name, name, "the table is stored under exactly the given name");
        const columns = (db.prepare("SELECT name FROM pragma_table_info(?)").all(name) as { name: string }[]).map((c) => c.name);
        assert.deepEqual(columns, [name, `${name}_2`]);
        assert.ok(db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'victim'").get(), "no injected statement ran");
      } finally {
        db.close();
      }
    });
  }

  it("refuses a name with a NUL character instead of truncating it", () => {
    assert.throws(() => quoteIdent("a\u0000b"), /NUL/);
  });
});

describe("quoteLiteral", () => {
  for (const text of ["it's", "''", "plain", "ünï 😀", "a\nb", ""]) {
    it(`round-trips ${JSON.stringify(text)}`, () => {
      const db = new Database(":memory:");
      try {
        const row = db.prepare(`SELECT ${quoteLiteral(text)} AS v`).get() as { v: string };
        assert.equal(row.v, text);
      } finally {
        db.close();
      }
    });
  }
});
