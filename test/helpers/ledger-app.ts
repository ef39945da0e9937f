// A stand-in app for restore tests, run as its own process: it reads and writes a database in a loop while marmot
// restores a snapshot into it, and reports every error it got and every torn state it saw.
//
// Usage: node ledger-app.js DB STOP_FILE BIG_COUNTS
//   accounts: the sum of balance is always 1000 (the app moves amounts between accounts in one transaction);
//   big: the row count is one of BIG_COUNTS (comma separated: before and after the restore), never in between;
//   events: each loop appends a row, noting whether it saw the restored state (the last of BIG_COUNTS).
// Prints "ready" after its first loop, then one JSON summary line when STOP_FILE appears.

import { existsSync } from "node:fs";
import Database from "better-sqlite3";

const [path, stopFile, counts] = process.argv.slice(2) as [string, string, string];
const bigCounts = counts.split(",").map(Number);
const restoredCount = bigCounts[bigCounts.length - 1]!;
// Long enough to wait out the restore's write lock: an app that gives up sooner gets SQLITE_BUSY, which is allowed.
const db = new Database(path, { timeout: 60_000 });
const summary = { loops: 0, busy: 0, errors: [] as string[], torn: [] as string[], notesAfterRestore: [] as string[], sawRestored: false };

function step(i: number): void {
  const move = db.transaction(() => {
    const from = 1 + (i % 10);
    const to = 1 + ((i + 3) % 10);
    db.prepare("UPDATE accounts SET balance = balance - 7 WHERE id = ?").run(from);
    db.prepare("UPDATE accounts SET balance = balance + 7 WHERE id = ?").run(to);
    const big = Number(db.prepare("SELECT count(*) FROM big").pluck().get());
    const note = `loop-${i}-${big === restoredCount ? "after" : "before"}`;
    db.prepare("INSERT INTO events (note) VALUES (?)").run(note);
    return { big, note };
  });
  const { big, note } = move.immediate();
  if (big === restoredCount) {
    summary.sawRestored = true;
    summary.notesAfterRestore.push(note);
  }
  const read = db.transaction(() => {
    const sum = Number(db.prepare("SELECT sum(balance) FROM accounts").pluck().get());
    const count = Number(db.prepare("SELECT count(*) FROM big").pluck().get());
    return { sum, count };
  });
  const seen = read.deferred();
  if (seen.sum !== 1000) summary.torn.push(`sum of balances ${seen.sum}`);
  if (!bigCounts.includes(seen.count)) summary.torn.push(`big has ${seen.count} rows`);
}

for (let i = 0; !existsSync(stopFile); i++) {
  try {
    step(i);
  } catch (err) {
    const code = (err as { code?: string }).code ?? "";
    if (code === "SQLITE_BUSY") summary.busy += 1;
    else summary.errors.push(`${code}: ${(err as Error).message}`);
  }
  summary.loops += 1;
  // A short pause, as an app between requests: marmot's BEGIN IMMEDIATE then gets its turn at the write lock.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
  if (summary.loops === 1) process.stdout.write("ready\n");
  if (summary.sawRestored && summary.notesAfterRestore.length === 1) process.stdout.write("restored\n");
}
db.close();
process.stdout.write(`${JSON.stringify(summary)}\n`);
