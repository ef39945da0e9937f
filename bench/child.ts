// Runs one of the benchmark's app processes (a compiled script beside this file) and collects its JSON result.

import type { ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { spawnTracked, untrackPid } from "../test/helpers/processes.js";

export interface AppProcess<T> {
  readonly pid: number;
  /** resolves when the script printed "ready" (it has opened the database) */
  readonly ready: Promise<void>;
  /** resolves with the script's last output line, parsed; rejects when it fails */
  readonly result: Promise<T>;
}

/** `script` is a file name in this folder, e.g. "bulk-load.js"; `args` travel as one JSON argument. */
export function startApp<T>(script: string, args: unknown): AppProcess<T> {
  const path = fileURLToPath(new URL(script, import.meta.url));
  const child: ChildProcess = spawnTracked(process.execPath, [path, JSON.stringify(args)], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  let markReady!: () => void;
  const ready = new Promise<void>((resolve) => (markReady = resolve));
  child.stdout!.on("data", (chunk: Buffer) => {
    stdout += chunk.toString("utf8");
    if (/^ready$/m.test(stdout)) markReady();
  });
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  const result = new Promise<T>((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code, signal) => {
      if (child.pid !== undefined) untrackPid(child.pid);
      markReady();
      const lines = stdout
        .trim()
        .split("\n")
        .filter((l) => l !== "ready");
      if (code !== 0 || lines.length === 0) {
        reject(new Error(`${script} failed (code ${code}, signal ${signal}): ${stderr.trim().slice(-2000)}`));
        return;
      }
      try {
        resolve(JSON.parse(lines[lines.length - 1]!) as T);
      } catch (err) {
        reject(new Error(`${script} printed no result: ${(err as Error).message}\n${stdout.slice(-500)}`));
      }
    });
  });
  result.catch(() => undefined);
  return { pid: child.pid ?? -1, ready, result };
}
