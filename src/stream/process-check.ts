// Whether a process id is alive and what it runs, on Linux and macOS: for the orphaned nats-server check.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

/**
 * True while the process exists: signal 0 checks without sending anything (ESRCH: gone; EPERM: it exists but is
 * another user's). On Linux a zombie also counts as gone: an orphan's zombie lingers where PID 1 does not reap
 * (marmot as a container's first process), and it would otherwise look alive for ever.
 */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
  return process.platform !== "linux" || !isLinuxZombie(pid);
}

function isLinuxZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.charAt(stat.lastIndexOf(")") + 2);
    return state === "Z" || state === "X";
  } catch {
    return false;
  }
}

/**
 * The command line of a running process, its arguments joined by spaces, or undefined when it cannot be read
 * (gone, or no way to ask). Linux keeps it in /proc, which minimal containers have when they lack `ps`; elsewhere
 * (macOS, the BSDs) `ps` answers.
 */
export function processCommandLine(pid: number): string | undefined {
  if (process.platform === "linux") {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim();
    } catch {
      // no /proc mounted: ask ps
    }
  }
  return commandLineFromPs(pid);
}

/** `ps -o command= -p PID`: the same answer on Linux, macOS and the BSDs. */
export function commandLineFromPs(pid: number): string | undefined {
  try {
    const out = execFileSync("ps", ["-o", "command=", "-p", String(pid)], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    return out === "" ? undefined : out;
  } catch {
    return undefined;
  }
}
