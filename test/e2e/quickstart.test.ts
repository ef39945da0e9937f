// The README's quick start, run as written: examples/run-cluster.sh, the sqlite3 insert, and Ctrl-C.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { repoRoot, waitFor } from "../helpers/marmot.js";
import { isAlive, spawnTracked, trackPid, untrackPid, useProcessCleanup, waitForExit } from "../helpers/processes.js";
import { sqlite3 } from "../helpers/sqlite.js";

useProcessCleanup();

const dbs = [1, 2, 3].map((i) => `/tmp/marmot-${i}.db`);

test("examples/run-cluster.sh says when it is ready, the insert typed right after travels, and Ctrl-C stops everything it started", async (t) => {
  // A process group of its own, so the test can send Ctrl-C's SIGINT to the script and all its children at once.
  const script = spawnTracked("bash", [join(repoRoot, "examples", "run-cluster.sh")], {
    cwd: repoRoot,
    env: { ...process.env, MARMOT_SKIP_SETUP: "1" },
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  script.stdout!.on("data", (c: Buffer) => (output += c.toString()));
  script.stderr!.on("data", (c: Buffer) => (output += c.toString()));
  const scriptExit = new Promise<number | null>((resolve) => script.once("exit", (code) => resolve(code)));
  t.after(() => {
    if (isAlive(script.pid!)) process.kill(-script.pid!, "SIGKILL");
  });

  // The script's own word is all a user has: the insert is typed once, right after its ready line, never retried.
  const marmotPids = (await waitFor(
    () =>
      output
        .match(/three marmot nodes ready \(pids (\d+) (\d+) (\d+)\); try this/)
        ?.slice(1)
        .map(Number),
    180_000,
    () => `the script to say the three nodes are ready:\n${output.slice(-3000)}`,
  ))!;
  sqlite3(dbs[0]!, "INSERT INTO Books (title, author, publication_year) VALUES ('Pride and Prejudice', 'Jane Austen', 1813);");
  marmotPids.forEach(trackPid);
  const natsPids = [1, 2, 3].map((i) => Number(readFileSync(`/tmp/marmot-nats-${i}/nats-server.pid`, "utf8")));
  natsPids.forEach(trackPid);
  assert.equal((output.match(/marmot is ready/g) ?? []).length, 3, `each node logs its ready line:\n${output.slice(-3000)}`);
  for (const db of dbs.slice(1)) {
    await waitFor(
      () => sqlite3(db, "SELECT author FROM Books WHERE title = 'Pride and Prejudice';").trim() === "Jane Austen",
      30_000,
      () => `the new book on ${db}`,
    );
  }

  // Updates and deletes made on any node travel the same way.
  sqlite3(dbs[2]!, "UPDATE Books SET publication_year = 1814 WHERE title = 'Pride and Prejudice';");
  sqlite3(dbs[1]!, "DELETE FROM Books WHERE title = '1984';");
  for (const db of dbs) {
    await waitFor(
      () =>
        sqlite3(db, "SELECT count(*) || '/' || (SELECT publication_year FROM Books WHERE title = 'Pride and Prejudice') FROM Books;").trim() ===
        "7/1814",
      30_000,
      () => `the update and the delete on ${db}: ${sqlite3(db, "SELECT * FROM Books;")}`,
    );
  }

  process.kill(-script.pid!, "SIGINT");
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), 60_000)));
  // Cleared, so the finished test does not wait out the minute.
  const code = await Promise.race([scriptExit, timeout]).finally(() => clearTimeout(timer));
  assert.notEqual(code, "timeout", `the script did not stop after Ctrl-C:\n${output.slice(-3000)}`);
  for (const pid of [...marmotPids, ...natsPids]) {
    assert.ok(await waitForExit(pid, 15_000), `process ${pid} still runs after Ctrl-C`);
    untrackPid(pid);
  }
  untrackPid(script.pid!);
  assert.ok(!existsSync("/tmp/marmot-nats-1/nats-server.pid"), "the embedded server removed its pid file on a clean stop");
});
