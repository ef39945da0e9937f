// Starts real marmot processes through bin/marmot, as a user would, and tears every one of them down.

import { execFileSync, type ChildProcess } from "node:child_process";
import { createWriteStream, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { freePorts } from "./ports.js";
import { isAlive, killPid, spawnTracked, trackPid, untrackPid, waitForExit } from "./processes.js";
import { createDb, sqlite3, tempDir } from "./sqlite.js";

export const repoRoot = resolve(fileURLToPath(new URL(".", import.meta.url)), "../../..");
export const marmotBin = join(repoRoot, "bin", "marmot");

/**
 * The command that runs bin/marmot with this test's Node: the flags its first line gives node (`#!/usr/bin/env -S
 * node FLAGS`), so a node runs as it does when a user starts bin/marmot.
 */
export const marmotCommand: readonly string[] = [process.execPath, ...nodeFlagsOf(marmotBin), marmotBin];

function nodeFlagsOf(script: string): string[] {
  const first = readFileSync(script, "utf8").split("\n", 1)[0]!;
  const match = /^#!\/usr\/bin\/env(?: -S)? node((?: --\S+)*)$/.exec(first);
  if (!match) throw new Error(`unexpected first line in ${script}: ${first}`);
  return match[1]!.split(" ").filter((f) => f !== "");
}

/** `marmot -config FILE -cleanup`, run to its end: its exit code and everything it printed. */
export async function runCleanup(configPath: string): Promise<{ code: number | null; output: string }> {
  const child = spawnTracked(marmotCommand[0]!, [...marmotCommand.slice(1), "-config", configPath, "-cleanup"], {
    cwd: repoRoot,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.on("data", (c: Buffer) => (output += c.toString("utf8")));
  child.stderr!.on("data", (c: Buffer) => (output += c.toString("utf8")));
  const code = await new Promise<number | null>((done) => child.once("close", done));
  untrackPid(child.pid!);
  return { code, output };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Poll `check` until it returns a truthy value or the deadline passes (then throw with `describe()`). */
export async function waitFor<T>(check: () => T | Promise<T>, timeoutMs: number, describe: () => string, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms: ${describe()}${lastError ? ` (last error: ${(lastError as Error).message})` : ""}`);
    }
    await sleep(everyMs);
  }
}

export interface MarmotNodeSpec {
  id: number;
  dbPath: string;
  configPath: string;
  storeDir: string;
  logPath: string;
  args: string[];
  /** a command that runs marmot inside it, e.g. ["ip", "netns", "exec", "ns1"] (it must exec, keeping the pid) */
  launcher?: string[];
}

/** One running `bin/marmot` process. */
export class MarmotProcess {
  child: ChildProcess | undefined;
  output = "";
  natsPid: number | undefined;
  private exitCode: Promise<number | null> = Promise.resolve(null);

  constructor(readonly spec: MarmotNodeSpec) {}

  get pid(): number {
    return this.child?.pid ?? -1;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  start(): void {
    this.output = "";
    const log = createWriteStream(this.spec.logPath, { flags: "a" });
    const command = [...(this.spec.launcher ?? []), ...marmotCommand, ...this.spec.args];
    const child = spawnTracked(command[0]!, command.slice(1), { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    const collect = (chunk: Buffer) => {
      const text = chunk.toString("utf8");
      this.output += text;
      log.write(text);
    };
    child.stdout!.on("data", collect);
    child.stderr!.on("data", collect);
    this.exitCode = new Promise((resolveExit) => child.once("exit", (code) => resolveExit(code)));
    void this.exitCode.then(() => log.end());
  }

  /** Wait for a log line, and learn the pid of the embedded nats-server so it can never leak. */
  async waitForLog(pattern: RegExp, timeoutMs = 60_000): Promise<void> {
    await waitFor(
      () => {
        if (!this.running && !pattern.test(this.output)) throw new Error(`marmot ${this.spec.id} exited:\n${this.tail()}`);
        return pattern.test(this.output);
      },
      timeoutMs,
      () => `node ${this.spec.id} to log ${pattern}; its output:\n${this.tail()}`,
    );
    this.learnNatsPid();
  }

  async waitRunning(timeoutMs = 90_000): Promise<void> {
    await this.waitForLog(/marmot is running/, timeoutMs);
  }

  learnNatsPid(): void {
    const pidFile = join(this.spec.storeDir, "nats-server.pid");
    if (existsSync(pidFile)) {
      const pid = Number(readFileSync(pidFile, "utf8").trim());
      if (pid > 0) {
        this.natsPid = pid;
        trackPid(pid);
      }
    }
  }

  tail(lines = 40): string {
    return this.output.split("\n").slice(-lines).join("\n");
  }

  /** SIGTERM and wait: returns marmot's exit code; its nats-server must be gone too. */
  async stop(timeoutMs = 30_000): Promise<number | null> {
    if (!this.child) return null;
    this.learnNatsPid();
    const pid = this.pid;
    if (this.running) this.child.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((resolveTimeout) => (timer = setTimeout(() => resolveTimeout("timeout"), timeoutMs)));
    // The timer is cleared so that a stopped cluster does not keep the test process alive for timeoutMs.
    const exited = await Promise.race([this.exitCode, timedOut]).finally(() => clearTimeout(timer));
    if (exited === "timeout") {
      await killPid(pid, 0);
      throw new Error(`marmot ${this.spec.id} (pid ${pid}) did not stop within ${timeoutMs} ms of SIGTERM:\n${this.tail()}`);
    }
    untrackPid(pid);
    if (this.natsPid !== undefined) {
      const gone = await waitForExit(this.natsPid, 10_000);
      if (!gone) {
        await killPid(this.natsPid, 0);
        throw new Error(`marmot ${this.spec.id} stopped but left its nats-server (pid ${this.natsPid}) running`);
      }
      untrackPid(this.natsPid);
    }
    return exited;
  }

  /** SIGKILL marmot (a crash); its orphaned nats-server is killed too, as a machine failure would. */
  async crash(): Promise<void> {
    this.learnNatsPid();
    if (this.running) this.child!.kill("SIGKILL");
    await this.exitCode;
    untrackPid(this.pid);
    if (this.natsPid !== undefined && isAlive(this.natsPid)) await killPid(this.natsPid, 0);
  }

  exited(): Promise<number | null> {
    return this.exitCode;
  }
}

export interface ClusterOptions {
  size?: number;
  replicas?: number;
  shards?: number;
  /** SQL run on every node's database before marmot starts */
  schema: string;
  /** extra TOML appended to every node's config */
  toml?: string;
  /** external NATS: nodes get [nats] urls instead of embedded servers */
  natsUrls?: string[];
  /** top-level TOML keys for one node (publish, replicate, ...) */
  nodeToml?: (id: number) => string;
  /** embedded NATS: the address each node's routes listen on and peers dial (default 127.0.0.1) */
  routeHost?: (id: number) => string;
  /** see MarmotNodeSpec.launcher */
  launcher?: (id: number) => string[];
  /** [replication_log] max_entries (default 100000) */
  maxEntries?: number;
}

/** N marmot nodes on loopback, each with its own database and (by default) its own embedded nats-server. */
export class TestCluster {
  readonly nodes: MarmotProcess[] = [];

  private constructor(readonly dir: string) {}

  static async create(options: ClusterOptions): Promise<TestCluster> {
    const size = options.size ?? 3;
    const cluster = new TestCluster(tempDir("marmot-e2e-"));
    const ports = options.natsUrls ? [] : await freePorts(size);
    for (let id = 1; id <= size; id++) {
      const dbPath = join(cluster.dir, `node-${id}.db`);
      createDb(dbPath, options.schema);
      const configPath = join(cluster.dir, `node-${id}.toml`);
      const urls = options.natsUrls ? `urls = ${JSON.stringify(options.natsUrls)}\n` : "";
      writeFileSync(
        configPath,
        [
          `db_path = ${JSON.stringify(dbPath)}`,
          `node_id = ${id}`,
          options.nodeToml?.(id) ?? "",
          "",
          "[replication_log]",
          `shards = ${options.shards ?? 1}`,
          `replicas = ${options.replicas ?? 1}`,
          `max_entries = ${options.maxEntries ?? 100_000}`,
          "",
          "[nats]",
          'bind_address = "127.0.0.1:-1"',
          urls,
          options.toml ?? "",
        ].join("\n"),
      );
      const args = ["-config", configPath];
      if (!options.natsUrls) {
        const host = (node: number) => options.routeHost?.(node) ?? "127.0.0.1";
        const peers = ports.map((p, i) => `nats://${host(i + 1)}:${p}/`).filter((_, i) => i !== id - 1);
        args.push("-cluster-addr", `${host(id)}:${ports[id - 1]}`, "-cluster-peers", peers.join(","));
      }
      const storeDir = join(cluster.dir, `marmot-nats-${id}`);
      const launcher = options.launcher?.(id);
      cluster.nodes.push(new MarmotProcess({ id, dbPath, configPath, storeDir, logPath: join(cluster.dir, `node-${id}.log`), args, launcher }));
    }
    return cluster;
  }

  node(id: number): MarmotProcess {
    return this.nodes[id - 1]!;
  }

  async startAll(): Promise<void> {
    for (const n of this.nodes) n.start();
    await Promise.all(this.nodes.map((n) => n.waitRunning()));
  }

  async stopAll(): Promise<void> {
    const results = await Promise.allSettled(this.nodes.map((n) => n.stop()));
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  /** Rows of a query on every node, as the sqlite3 CLI prints them. */
  query(sql: string): string[] {
    return this.nodes.map((n) => sqlite3(n.spec.dbPath, sql));
  }

  /**
   * Wait until `sqldiff` finds no difference in any of `tables` between node 1 and every other node,
   * twice in a row a moment apart (so a change still in flight is not mistaken for convergence).
   */
  async waitConverged(tables: string[], timeoutMs = 60_000): Promise<void> {
    let calm = 0;
    await waitFor(
      async () => {
        const diff = this.differences(tables);
        calm = diff === "" ? calm + 1 : 0;
        if (calm < 2) await sleep(300);
        return calm >= 2;
      },
      timeoutMs,
      () =>
        `nodes to converge; still different:\n${this.differences(tables).slice(0, 3000)}\n${this.nodes.map((n) => `--- node ${n.spec.id}\n${n.tail(15)}`).join("\n")}`,
    );
  }

  differences(tables: string[]): string {
    let out = "";
    const first = this.nodes[0]!.spec.dbPath;
    for (const other of this.nodes.slice(1)) {
      for (const table of tables) out += tableDiff(first, other.spec.dbPath, table);
    }
    return out;
  }
}

/**
 * sqldiff restricted to one user table (marmot's own bookkeeping legitimately differs between nodes), rows matched
 * by their declared primary key: the hidden rowid of a table with a non-integer key is local to each file (VACUUM
 * may renumber it too). Tables without a declared key are matched by rowid, which marmot replicates.
 */
export function tableDiff(a: string, b: string, table: string): string {
  return execFileSync("sqldiff", ["--primarykey", "--table", table, a, b], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

export interface MarmotRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs bin/marmot with `args` to its exit (a one-shot command such as -save-snapshot); killed by pid after timeoutMs. */
export async function runMarmotCommand(args: string[], timeoutMs = 60_000): Promise<MarmotRun> {
  const child = spawnTracked(marmotCommand[0]!, [...marmotCommand.slice(1), ...args], { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  const closed = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), timeoutMs)));
  const result = await Promise.race([closed, timedOut]).finally(() => clearTimeout(timer));
  if (result === "timeout") {
    await killPid(child.pid!, 0);
    throw new Error(`marmot ${args.join(" ")} did not exit within ${timeoutMs} ms:\n${stdout}${stderr}`);
  }
  untrackPid(child.pid!);
  return { code: result, stdout, stderr };
}
