// Marmot's writes while another process holds the database's write lock: they wait without blocking the event loop.

import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { failFastWhenBusy, withWriteLock } from "../../src/sqlite/busy.js";
import { openDatabase } from "../../src/sqlite/open.js";
import { waitFor } from "../helpers/marmot.js";
import { spawnTracked, untrackPid, useProcessCleanup } from "../helpers/processes.js";
import { createDb, recordingLogger, removeTempDirs, sqlite3, tempDir } from "../helpers/sqlite.js";

useProcessCleanup();
const require = createRequire(import.meta.url);
after(removeTempDirs);

/** Another process, an app, that takes the write lock, says so, keeps it `holdMs`, commits and says so. */
function holdLock(dbPath: string, holdMs: number) {
  const script = `
    const Database = require(${JSON.stringify(require.resolve("better-sqlite3"))});
    const db = new Database(${JSON.stringify(dbPath)});
    db.exec("BEGIN IMMEDIATE");
    db.exec("INSERT INTO t VALUES ('app')");
    process.stdout.write("holding\\n");
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ${holdMs});
    db.exec("COMMIT");
    process.stdout.write("released\\n");
    db.close();`;
  const child = spawnTracked(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
  child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return {
    output: () => output,
    holding: () =>
      waitFor(
        () => output.includes("holding"),
        30_000,
        () => `the app to take the lock: ${output}`,
      ),
    done: async () => {
      const code = await exited;
      untrackPid(child.pid!);
      return code;
    },
  };
}

describe("writing while the app holds the write lock", () => {
  it("waits for the lock without blocking the event loop, writes after the app commits, and says once what it waits for", async () => {
    const path = createDb(join(tempDir(), "app.sqlite"), "CREATE TABLE t (v TEXT);");
    const db = openDatabase(path, recordingLogger());
    failFastWhenBusy(db);
    try {
      const app = holdLock(path, 1500);
      await app.holding();
      let turns = 0;
      const ticker = setInterval(() => turns++, 10);
      const logger = recordingLogger();
      try {
        // With a 5 ms busy timeout and a 1.5 s hold, a single try would fail with SQLITE_BUSY.
        await withWriteLock(() => db.prepare("INSERT INTO t VALUES ('marmot')").run(), "a test write", logger);
      } finally {
        clearInterval(ticker);
      }
      assert.equal(await app.done(), 0, `the app failed: ${app.output()}`);
      assert.equal(
        sqlite3(path, "SELECT group_concat(v, ',') FROM (SELECT v FROM t ORDER BY rowid);").trim(),
        "app,marmot",
        "the app's write first, then marmot's",
      );
      // A blocked thread would not have run the ticker at all while waiting.
      assert.ok(turns > 5, `the event loop turned while marmot waited (${turns} turns)`);
      assert.equal(logger.lines.filter((l) => /waiting for another connection/.test(l.message)).length, 1, "one line says what it waits for");
    } finally {
      db.close();
    }
  });

  it("gives up when stopped, writing nothing", async () => {
    const path = createDb(join(tempDir(), "app.sqlite"), "CREATE TABLE t (v TEXT);");
    const db = openDatabase(path, recordingLogger());
    failFastWhenBusy(db);
    try {
      const app = holdLock(path, 3000);
      await app.holding();
      const stop = new AbortController();
      const write = withWriteLock(() => db.prepare("INSERT INTO t VALUES ('marmot')").run(), "a test write", recordingLogger(), stop.signal);
      stop.abort(new Error("stopping"));
      await assert.rejects(write, /stopping/);
      assert.equal(await app.done(), 0, `the app failed: ${app.output()}`);
      assert.equal(sqlite3(path, "SELECT group_concat(v, ',') FROM t;").trim(), "app");
    } finally {
      db.close();
    }
  });
});
