// Describes the machine a run happened on, so every figure is read next to what produced it.

import { execFileSync } from "node:child_process";
import { cpus, totalmem, loadavg, release } from "node:os";
import { createRequire } from "node:module";
import Database from "better-sqlite3";
import { findNatsServer } from "../src/stream/nats-binary.js";

export interface Machine {
  cpuModel: string;
  cores: number;
  memoryGb: number;
  loadAverage: number[];
  kernel: string;
  node: string;
  natsServer: string;
  sqlite: string;
  betterSqlite3: string;
}

/** The version of the nats-server marmot starts (the same lookup as marmot's). */
function natsServerVersion(): string {
  try {
    return execFileSync(findNatsServer(), ["--version"], { encoding: "utf8" }).trim();
  } catch (err) {
    return `unknown (${(err as Error).message})`;
  }
}

export function describeMachine(): Machine {
  const db = new Database(":memory:");
  const sqlite = String(db.prepare("SELECT sqlite_version()").pluck(true).get());
  db.close();
  const pkg = createRequire(import.meta.url)("better-sqlite3/package.json") as { version: string };
  const cpu = cpus();
  return {
    cpuModel: cpu[0]?.model ?? "unknown",
    cores: cpu.length,
    memoryGb: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    loadAverage: loadavg().map((l) => Math.round(l * 100) / 100),
    kernel: release(),
    node: process.version,
    natsServer: natsServerVersion(),
    sqlite,
    betterSqlite3: pkg.version,
  };
}
