// Test helpers: temporary files, and the sqlite3/sqldiff CLIs standing in for an app that writes the database.

import { execFileSync, spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Logger, LogFields } from "../../src/log.js";

const createdDirs = new Set<string>();

/** A fresh directory under the OS temp dir; removed by removeTempDirs() or at process exit. */
export function tempDir(prefix = "marmot-test-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  createdDirs.add(dir);
  return dir;
}

export function removeTempDirs(): void {
  for (const dir of createdDirs) rmSync(dir, { recursive: true, force: true });
  createdDirs.clear();
}

process.on("exit", removeTempDirs);

/** The app's CLI: waits up to 10 s for a lock, stops at the first error (and then throws). */
function cliArgs(path: string, sql: string): string[] {
  return ["-batch", "-bail", "-cmd", ".timeout 10000", path, sql];
}

/** Create (or extend) a database file with `sql`, as an app would, through the sqlite3 CLI. */
export function createDb(path: string, sql: string): string {
  sqlite3(path, sql);
  return path;
}

/** Run `sql` through the sqlite3 CLI in its own process; returns what it printed. */
export function sqlite3(path: string, sql: string): string {
  return execFileSync("sqlite3", cliArgs(path, sql), { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/**
 * Like sqlite3(), without blocking this process (for writes that must wait for marmot's transaction).
 * The SQL goes to the CLI on stdin, so a transaction of many rows is no problem for the argument list.
 */
export function sqlite3Async(path: string, sql: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn("sqlite3", ["-batch", "-bail", "-cmd", ".timeout 10000", path], { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString("utf8")));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`sqlite3 ${path} failed (exit ${code}): ${stderr}`));
    });
    child.stdin.end(sql);
  });
}

/** `sqldiff a b`: the SQL that turns a into b; empty when the two files hold the same schema and rows. */
export function sqldiff(a: string, b: string): string {
  return execFileSync("sqldiff", [a, b], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** A private copy of a fixture database (e.g. "chinook"), in a temp dir of its own. */
export function copyFixture(name: string, dir = tempDir()): string {
  const source = fixturePath(name);
  const target = join(dir, `${name}.sqlite`);
  copyFileSync(source, target);
  return target;
}

function fixturePath(name: string): string {
  const file = join(name, `${name}.sqlite`);
  const candidates: string[] = [];
  if (process.env.MARMOT_FIXTURES) candidates.push(join(process.env.MARMOT_FIXTURES, file));
  const root = repoRoot();
  if (root !== undefined) candidates.push(join(root, "test", "fixtures", file), join(root, "fixtures", file));
  candidates.push(join("/work/shared/fixtures", file));
  const found = candidates.find((candidate) => existsSync(candidate));
  if (found === undefined) throw new Error(`fixture ${name} not found; looked in ${candidates.join(", ")} (set MARMOT_FIXTURES)`);
  return found;
}

function repoRoot(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json"))) return dir;
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

export interface RecordedLine {
  level: "debug" | "info" | "warn" | "error";
  message: string;
  fields?: LogFields;
}

/** A Logger that keeps every line, for asserting what an operator would read. */
export function recordingLogger(lines: RecordedLine[] = []): Logger & { lines: RecordedLine[] } {
  const logger = {
    lines,
    debug: (message: string, fields?: LogFields) => void lines.push({ level: "debug", message, fields }),
    info: (message: string, fields?: LogFields) => void lines.push({ level: "info", message, fields }),
    warn: (message: string, fields?: LogFields) => void lines.push({ level: "warn", message, fields }),
    error: (message: string, fields?: LogFields) => void lines.push({ level: "error", message, fields }),
    child: () => logger,
  };
  return logger;
}
