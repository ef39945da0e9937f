// A stand-in app that writes one row at a time, run as its own process: each write is an autocommit INSERT, and the
// next one waits until marmot shipped it (its change log holds no change any more) and another node has applied it,
// so every write travels in a message of its own, as a slow trickle of writes would, and the running nodes keep up.
//
// Usage: node trickle-writer.js DB WITNESS_DB TABLE FIRST_ID COUNT; the table has columns (id, body, n). Prints one
// JSON line { written, ms } at the end; exits non-zero on any error.

import Database from "better-sqlite3";
import { changeLogTable, LOG_MARKER_OP, LOG_OP_COLUMN } from "../../src/sqlite/names.js";
import { quoteIdent } from "../../src/sqlite/quote.js";

const [path, witnessPath, table, firstId, count] = process.argv.slice(2) as [string, string, string, string, string];
const db = new Database(path, { timeout: 30_000 });
const witness = new Database(witnessPath, { readonly: true, timeout: 30_000 });
const applied = witness.prepare(`SELECT 1 FROM ${quoteIdent(table)} WHERE id = ?`);
const insert = db.prepare(`INSERT INTO ${quoteIdent(table)} (id, body, n) VALUES (?, ?, ?)`);
const pending = db.prepare(`SELECT count(*) FROM ${quoteIdent(changeLogTable(table))} WHERE ${quoteIdent(LOG_OP_COLUMN)} <> ?`).pluck();
const started = Date.now();
const first = Number(firstId);
for (let id = first; id < first + Number(count); id++) {
  insert.run(id, `single-row write ${id}`, id);
  const deadline = Date.now() + 60_000;
  while (Number(pending.get(LOG_MARKER_OP)) > 0 || applied.get(id) === undefined) {
    if (Date.now() > deadline) throw new Error(`write ${id} was not shipped and applied on ${witnessPath} within 60 s`);
    await new Promise((r) => setTimeout(r, 2));
  }
}
db.close();
witness.close();
process.stdout.write(`${JSON.stringify({ written: Number(count), ms: Date.now() - started })}\n`);
