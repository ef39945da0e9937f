// A registry of every process a test file starts, so none outlives the file, even when a test fails.

import { spawn, type ChildProcess, type SpawnOptions } from "node:child_process";
import { after } from "node:test";
import { isProcessAlive } from "../../src/stream/process-check.js";

const trackedPids = new Set<number>();
let cleanupInstalled = false;

/** Spawns a child process and registers its pid for cleanup. */
export function spawnTracked(command: string, args: readonly string[], options: SpawnOptions = {}): ChildProcess {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], ...options });
  if (child.pid !== undefined) {
    trackPid(child.pid);
  }
  // A failed spawn (ENOENT) must surface in the test, not crash the file with an unhandled "error" event.
  child.on("error", () => {});
  return child;
}

/** Registers a pid learned indirectly (a nats-server started by marmot, read from its pid file). */
export function trackPid(pid: number): void {
  trackedPids.add(pid);
  installExitGuard();
}

/** Forgets a pid that the test has already stopped itself. */
export function untrackPid(pid: number): void {
  trackedPids.delete(pid);
}

/** True while the process exists and is not a zombie waiting to be reaped (marmot's own check). */
export function isAlive(pid: number): boolean {
  return isProcessAlive(pid);
}

/** Resolves true once the pid is gone, false if it is still alive after timeoutMs. */
export async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isAlive(pid)) {
    if (Date.now() >= deadline) {
      return false;
    }
    await sleep(50);
  }
  return true;
}

/** Stops one process: SIGTERM, then SIGKILL after graceMs. Resolves once it is gone. */
export async function killPid(pid: number, graceMs = 3000): Promise<void> {
  if (isAlive(pid)) {
    signalQuietly(pid, "SIGTERM");
    if (!(await waitForExit(pid, graceMs))) {
      signalQuietly(pid, "SIGKILL");
      if (!(await waitForExit(pid, 5000))) {
        throw new Error(`process ${pid} is still alive after SIGKILL`);
      }
    }
  }
  trackedPids.delete(pid);
}

/** Stops every registered process, all in parallel. */
export async function killAll(graceMs = 3000): Promise<void> {
  await Promise.all([...trackedPids].map((pid) => killPid(pid, graceMs)));
}

/** The pids still registered (for tests that assert nothing leaked). */
export function trackedProcessIds(): number[] {
  return [...trackedPids];
}

/**
 * Call once at the top of a test file: kills every registered process after the file's tests,
 * whatever their outcome, and again synchronously if the process exits early.
 */
export function useProcessCleanup(): void {
  if (cleanupInstalled) {
    return;
  }
  cleanupInstalled = true;
  after(() => killAll());
  installExitGuard();
}

let exitGuardInstalled = false;

function installExitGuard(): void {
  if (exitGuardInstalled) {
    return;
  }
  exitGuardInstalled = true;
  // The last resort when the test file crashes or calls process.exit: no time for grace, only SIGKILL.
  process.on("exit", () => {
    for (const pid of trackedPids) {
      signalQuietly(pid, "SIGKILL");
    }
  });
}

function signalQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
