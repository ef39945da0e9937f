// An app for tests, run as its own process: holds its database's write lock in long transactions (writing its own
// rows in them) and, while it holds it, asks marmot's metrics endpoint again and again. Prints one JSON result line.

import Database from "better-sqlite3";

const { dbPath, table, metricsUrl, holds, fetchesPerHold } = JSON.parse(process.argv[2]!) as {
  dbPath: string;
  table: string;
  metricsUrl: string;
  holds: number;
  fetchesPerHold: number;
};
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const db = new Database(dbPath);
// What an app sets; marmot's own transactions are short, so this app never waits long.
db.pragma("busy_timeout = 10000");
const insert = db.prepare(`INSERT INTO "${table}" (id, v) VALUES (?, ?)`);
const appErrors: string[] = [];
let answered = 0;
const unanswered: string[] = [];
for (let h = 1; h <= holds; h++) {
  try {
    db.exec("BEGIN IMMEDIATE");
    insert.run(1_000_000 + h, `written by the app while holding the lock, hold ${h}`);
    for (let f = 0; f < fetchesPerHold; f++) {
      try {
        // A generous deadline: a marmot blocked on the lock would not answer until the app lets go.
        const res = await fetch(metricsUrl, { signal: AbortSignal.timeout(8000) });
        await res.text();
        answered++;
      } catch (err) {
        unanswered.push(`hold ${h}: ${(err as Error).message}`);
      }
      await pause(100);
    }
    db.exec("COMMIT");
  } catch (err) {
    appErrors.push(`${(err as { code?: string }).code ?? ""} ${(err as Error).message}`);
    if (db.inTransaction) db.exec("ROLLBACK");
  }
  await pause(300);
}
db.close();
process.stdout.write(`${JSON.stringify({ answered, unanswered, appErrors })}\n`);
