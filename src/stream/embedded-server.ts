// Starts and supervises the nats-server process that marmot runs when no external NATS is configured.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { createInterface } from "node:readline";
import { ConfigError, ServerError } from "../errors.js";
import type { Logger } from "../log.js";
import { readServerInfo } from "./connect.js";
import { findNatsServer } from "./nats-binary.js";
import { isProcessAlive, processCommandLine } from "./process-check.js";

export interface EmbeddedServerOptions {
  /** unique in the cluster, e.g. "marmot-node-1" (JetStream clustering needs it) */
  serverName: string;
  /** holds the JetStream store, the generated config, the pid file and the ports file; created if missing */
  storeDir: string;
  /** client listen address "host:port"; port -1 = any free port; empty host = all interfaces; "" = 127.0.0.1:-1 */
  bindAddress: string;
  /** route listen address "host:port" (-cluster-addr); unset = no cluster */
  clusterAddr?: string;
  /** route URLs of the other nodes, e.g. nats://10.0.0.2:4248/ (-cluster-peers) */
  clusterPeers: string[];
  /** leaf node remote URLs (-leaf-servers) */
  leafServers: string[];
  /** a nats-server config file of the user's ([nats] server_config); its settings win over ours */
  serverConfig?: string;
  /** how long to wait for the server to accept clients; default 60 s (a large JetStream store takes a while) */
  startTimeoutMs?: number;
}

export interface ServerExit {
  code: number | null;
  signal: string | null;
}

const CLUSTER_NAME = "e-marmot";
const CONFIG_FILE = "nats-server.conf";
const PID_FILE = "nats-server.pid";
const DEFAULT_BIND = "127.0.0.1:-1";
const DEFAULT_START_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 10_000;
const OUTPUT_LINES_KEPT = 30;

export class EmbeddedServer {
  private stopRequested = false;
  private stopping: Promise<void> | undefined;
  private hasExited = false;
  private readonly unexpectedExitCallbacks: Array<(exit: ServerExit) => void> = [];

  private constructor(
    private readonly child: ChildProcess,
    /** the URL a client on this host connects to, learned from the server's ports file */
    readonly clientUrl: string,
    readonly pid: number,
    /** resolves when the process has exited and its output is drained */
    readonly exited: Promise<ServerExit>,
    private readonly pidFile: string,
    private readonly output: OutputTail,
    private readonly logger: Logger,
  ) {
    void exited.then((exit) => this.onExit(exit));
  }

  /** Writes the config, starts nats-server and resolves once it accepts client connections. */
  static async start(options: EmbeddedServerOptions, logger: Logger): Promise<EmbeddedServer> {
    const storeDir = resolve(options.storeDir);
    const bind = parseHostPort(options.bindAddress === "" ? DEFAULT_BIND : options.bindAddress, "[nats] bind_address");
    const settings = validateOptions(options);
    const binary = findNatsServer();

    mkdirSync(storeDir, { recursive: true });
    const configPath = join(storeDir, CONFIG_FILE);
    const pidFile = join(storeDir, PID_FILE);
    await killOrphanedServer(pidFile, configPath, logger);
    removePortsFiles(storeDir);
    writeFileSync(configPath, renderConfig(options.serverName, storeDir, bind, settings, pidFile, configPath));

    const serverLogger = logger.child({ component: "nats-server" });
    // Its own session: a Ctrl-C in the terminal must not stop NATS under marmot while marmot still flushes.
    const child = spawn(binary, ["-c", configPath], { stdio: ["ignore", "pipe", "pipe"], detached: true });
    const output = new OutputTail(OUTPUT_LINES_KEPT);
    let spawnError: Error | undefined;
    child.on("error", (err) => {
      // Later errors (a failed kill) are only worth a line: the exit handler reports what matters.
      spawnError ??= err;
      serverLogger.warn(`nats-server process error: ${err.message}`);
    });
    const exited = new Promise<ServerExit>((resolveExit) => {
      child.once("close", (code, signal) => resolveExit({ code, signal }));
    });
    for (const stream of [child.stdout, child.stderr]) {
      if (stream !== null) {
        createInterface({ input: stream }).on("line", (line) => {
          output.push(line);
          logServerLine(serverLogger, line);
        });
      }
    }

    // spawn reports ENOENT/EACCES asynchronously, before the next turn of the event loop.
    await new Promise<void>((r) => setImmediate(r));
    if (spawnError !== undefined || child.pid === undefined) {
      throw new ServerError(`could not start ${binary}: ${spawnError?.message ?? "no pid"}. Check that it is an executable nats-server`, {
        cause: spawnError,
      });
    }
    const pid = child.pid;
    logger.info("starting embedded nats-server", { pid, config: configPath, serverName: options.serverName });

    let exitedEarly: ServerExit | undefined;
    void exited.then((exit) => {
      exitedEarly = exit;
    });
    try {
      const clientUrl = await waitUntilReady({
        storeDir,
        pid,
        bindHost: bind.host,
        timeoutMs: options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS,
        hasExited: () => exitedEarly,
      });
      logger.info("embedded nats-server is accepting clients", { pid, clientUrl });
      return new EmbeddedServer(child, clientUrl, pid, exited, pidFile, output, serverLogger);
    } catch (err) {
      if (exitedEarly === undefined) {
        child.kill("SIGKILL");
      }
      const exit = await exited;
      const reason = err instanceof Error ? err.message : String(err);
      throw new ServerError(
        `embedded nats-server (config ${configPath}) did not start: ${reason}` +
          ` (exit code ${exit.code ?? "none"}, signal ${exit.signal ?? "none"}).` +
          ` Its last output:\n${output.text() || "(nothing)"}\n` +
          "Check the bind address and cluster address are free (another marmot or nats-server?) and the store directory is writable",
        { cause: err },
      );
    }
  }

  /** cb runs if the process dies while stop() was not requested: the node should log it and exit non-zero. */
  onUnexpectedExit(cb: (exit: ServerExit) => void): void {
    this.unexpectedExitCallbacks.push(cb);
  }

  /** SIGTERM, then SIGKILL after 10 s; resolves once the process is gone. Safe to call more than once. */
  stop(): Promise<void> {
    this.stopping ??= this.stopProcess();
    return this.stopping;
  }

  private async stopProcess(): Promise<void> {
    this.stopRequested = true;
    if (!this.hasExited) {
      this.logger.info("stopping embedded nats-server", { pid: this.pid });
      this.child.kill("SIGTERM");
      let timer: NodeJS.Timeout | undefined;
      const gaveUp = await Promise.race([
        this.exited.then(() => false),
        new Promise<boolean>((r) => {
          timer = setTimeout(() => r(true), STOP_GRACE_MS);
        }),
      ]);
      clearTimeout(timer);
      if (gaveUp) {
        this.logger.warn(`nats-server did not stop within ${STOP_GRACE_MS / 1000} s of SIGTERM; sending SIGKILL`, { pid: this.pid });
        this.child.kill("SIGKILL");
      }
      await this.exited;
    }
    // A pid file left behind would make the next start look for an orphan that is not there.
    rmSync(this.pidFile, { force: true });
  }

  private onExit(exit: ServerExit): void {
    this.hasExited = true;
    if (this.stopRequested) {
      this.logger.info("embedded nats-server stopped", { pid: this.pid, code: exit.code, signal: exit.signal });
      return;
    }
    this.logger.error(
      `embedded nats-server exited unexpectedly (code ${exit.code ?? "none"}, signal ${exit.signal ?? "none"}); ` +
        `replication has stopped on this node. Its last output:\n${this.output.text() || "(nothing)"}`,
      { pid: this.pid },
    );
    for (const cb of this.unexpectedExitCallbacks) {
      cb(exit);
    }
  }
}

interface HostPort {
  /** "" = all interfaces */
  host: string;
  /** -1 = any free port */
  port: number;
}

interface ClusterSettings {
  cluster: HostPort | undefined;
  routes: string[];
  leafServers: string[];
  /** relative to the store dir: nats-server 2.9 joins include paths onto the including file's folder */
  includePath: string | undefined;
}

function validateOptions(options: EmbeddedServerOptions): ClusterSettings {
  if (options.serverName.trim() === "") {
    throw new ConfigError("the embedded nats-server needs a server name (from node_id); got an empty one");
  }
  const clusterAddr = options.clusterAddr ?? "";
  const cluster = clusterAddr === "" ? undefined : parseHostPort(clusterAddr, "-cluster-addr");
  if (cluster === undefined && options.clusterPeers.length > 0) {
    throw new ConfigError(
      `-cluster-peers (${options.clusterPeers.join(",")}) was given without -cluster-addr: ` +
        "a node must listen for routes to join a cluster; add -cluster-addr HOST:PORT",
    );
  }
  for (const url of options.clusterPeers) {
    checkUrl(url, "-cluster-peers", "nats://host:port");
  }
  for (const url of options.leafServers) {
    checkUrl(url, "-leaf-servers", "nats://host:port");
  }
  let includePath: string | undefined;
  if (options.serverConfig !== undefined && options.serverConfig !== "") {
    const userConfig = resolve(options.serverConfig);
    if (!existsSync(userConfig)) {
      throw new ConfigError(`[nats] server_config names ${userConfig}, which does not exist: fix the path or remove the key`);
    }
    includePath = relative(resolve(options.storeDir), userConfig);
  }
  return { cluster, routes: options.clusterPeers, leafServers: options.leafServers, includePath };
}

function parseHostPort(value: string, key: string): HostPort {
  const match = /^(?:\[([^\]]*)\]|([^:[\]]*)):(-?\d+)$/.exec(value.trim());
  const port = match === null ? NaN : Number(match[3]);
  if (match === null || !Number.isInteger(port) || port < -1 || port > 65535) {
    throw new ConfigError(`${key} "${value}" is not host:port (e.g. 127.0.0.1:4222, or port -1 for any free port)`);
  }
  return { host: match[1] ?? match[2] ?? "", port };
}

function checkUrl(url: string, key: string, example: string): void {
  try {
    new URL(url);
  } catch {
    throw new ConfigError(`${key}: "${url}" is not a URL (expected ${example})`);
  }
}

function renderConfig(serverName: string, storeDir: string, bind: HostPort, settings: ClusterSettings, pidFile: string, configPath: string): string {
  const q = (value: string) => JSON.stringify(value);
  const lines = [
    `# ${configPath}: written by marmot at every start, so edits here are lost.`,
    "# Put your own settings in the file named by [nats] server_config: it is included last and wins.",
    `server_name: ${q(serverName)}`,
  ];
  if (bind.host !== "") {
    lines.push(`host: ${q(bind.host)}`);
  }
  lines.push(`port: ${bind.port}`, `pid_file: ${q(pidFile)}`, `ports_file_dir: ${q(storeDir)}`);
  lines.push("jetstream {", `  store_dir: ${q(storeDir)}`, "}");
  if (settings.cluster !== undefined) {
    lines.push("cluster {", `  name: ${q(CLUSTER_NAME)}`);
    if (settings.cluster.host !== "") {
      lines.push(`  host: ${q(settings.cluster.host)}`);
    }
    lines.push(`  port: ${settings.cluster.port}`);
    if (settings.routes.length > 0) {
      lines.push(`  routes: [${settings.routes.map(q).join(", ")}]`);
    }
    lines.push("}");
  }
  if (settings.leafServers.length > 0) {
    lines.push("leafnodes {", `  remotes: [ { urls: [${settings.leafServers.map(q).join(", ")}] } ]`, "}");
  }
  if (settings.includePath !== undefined) {
    lines.push(`include ${q(settings.includePath)}`);
  }
  return lines.join("\n") + "\n";
}

/** Kills a nats-server that a previous marmot, killed with SIGKILL, left running on this store. */
/**
 * The pid of the nats-server that runs with the config in `storeDir` (a running marmot's embedded server, or one a
 * killed marmot left behind), or undefined when none runs. Starting another server on that store would kill it.
 */
export function runningServerPid(storeDir: string): number | undefined {
  const dir = resolve(storeDir);
  let pid: number;
  try {
    pid = Number.parseInt(readFileSync(join(dir, PID_FILE), "utf8").trim(), 10);
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid || !isProcessAlive(pid)) return undefined;
  const command = processCommandLine(pid);
  return command?.includes("nats-server") && command.includes(join(dir, CONFIG_FILE)) ? pid : undefined;
}

async function killOrphanedServer(pidFile: string, configPath: string, logger: Logger): Promise<void> {
  let pid: number;
  try {
    pid = Number.parseInt(readFileSync(pidFile, "utf8").trim(), 10);
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid || !isProcessAlive(pid)) {
    rmSync(pidFile, { force: true });
    return;
  }
  const command = processCommandLine(pid);
  if (command === undefined) {
    return;
  }
  // The pid may have been reused: only a nats-server running our config file is ours to kill.
  if (!command.includes("nats-server") || !command.includes(configPath)) {
    logger.debug("pid file names a process that is not our nats-server; ignoring it", { pid, pidFile });
    rmSync(pidFile, { force: true });
    return;
  }
  logger.warn("killing nats-server left running by a previous marmot (was marmot killed with SIGKILL?)", { pid, pidFile });
  signalQuietly(pid, "SIGTERM");
  if (!(await waitForDeath(pid, STOP_GRACE_MS))) {
    signalQuietly(pid, "SIGKILL");
    if (!(await waitForDeath(pid, 5000))) {
      throw new ServerError(
        `nats-server pid ${pid} from a previous run still holds ${pidFile} after SIGKILL; stop it by hand and start marmot again`,
      );
    }
  }
  rmSync(pidFile, { force: true });
}

function removePortsFiles(storeDir: string): void {
  for (const name of readdirSync(storeDir)) {
    if (name.endsWith(".ports")) {
      rmSync(join(storeDir, name), { force: true });
    }
  }
}

async function waitUntilReady(opts: {
  storeDir: string;
  pid: number;
  bindHost: string;
  timeoutMs: number;
  hasExited: () => ServerExit | undefined;
}): Promise<string> {
  const deadline = Date.now() + opts.timeoutMs;
  let lastProblem = "it wrote no ports file yet";
  while (Date.now() < deadline) {
    if (opts.hasExited() !== undefined) {
      throw new Error("nats-server exited before it accepted clients");
    }
    const urls = readClientUrls(opts.storeDir, opts.pid);
    if (urls !== undefined) {
      const url = pickClientUrl(urls, opts.bindHost);
      try {
        const { hostname, port } = new URL(url);
        // INFO comes before any auth or TLS, so this works whatever the user's server_config adds.
        await readServerInfo(hostname.replace(/^\[|\]$/g, ""), Number(port), 2000);
        return url;
      } catch (err) {
        lastProblem = `${url} does not answer yet: ${(err as Error).message}`;
      }
    }
    await sleep(100);
  }
  throw new Error(`it was not ready within ${opts.timeoutMs / 1000} s (${lastProblem})`);
}

/**
 * The client URL of the embedded server a running marmot started with this store dir, for commands that read the
 * cluster without running a node (marmot -status); undefined when no server runs there.
 */
export function runningServerUrl(storeDir: string, bindAddress: string): string | undefined {
  const pid = runningServerPid(storeDir);
  if (pid === undefined) return undefined;
  const urls = readClientUrls(storeDir, pid);
  return urls === undefined ? undefined : pickClientUrl(urls, parseHostPort(bindAddress || DEFAULT_BIND, "[nats] bind_address").host);
}

/** nats-server writes <exe>_<pid>.ports, JSON with the client URLs, once its listeners are up. */
function readClientUrls(storeDir: string, pid: number): string[] | undefined {
  const name = readdirSync(storeDir).find((n) => n.endsWith(`_${pid}.ports`));
  if (name === undefined) {
    return undefined;
  }
  try {
    const ports = JSON.parse(readFileSync(join(storeDir, name), "utf8")) as { nats?: unknown };
    const urls = Array.isArray(ports.nats) ? ports.nats.filter((u): u is string => typeof u === "string") : [];
    return urls.length > 0 ? urls : undefined;
  } catch {
    // Caught mid-write: try again on the next round.
    return undefined;
  }
}

function pickClientUrl(urls: string[], bindHost: string): string {
  const hostOf = (url: string) => {
    try {
      return new URL(url).hostname.replace(/^\[|\]$/g, "");
    } catch {
      return "";
    }
  };
  return urls.find((u) => bindHost !== "" && hostOf(u) === bindHost) ?? urls.find((u) => hostOf(u) === "127.0.0.1") ?? urls[0]!;
}

// "[1234] 2024/01/02 03:04:05.678901 [INF] Server is ready"
const SERVER_LINE = /^\[\d+\] \S+ \S+ \[([A-Z]{3})\] (.*)$/;

function logServerLine(logger: Logger, line: string): void {
  const match = SERVER_LINE.exec(line);
  const level = match?.[1];
  const message = match?.[2] ?? line;
  if (level === "FTL") {
    logger.error(message);
  } else if (level === "ERR") {
    logger.warn(message);
  } else {
    logger.debug(message);
  }
}

class OutputTail {
  private readonly lines: string[] = [];
  constructor(private readonly limit: number) {}

  push(line: string): void {
    this.lines.push(line);
    if (this.lines.length > this.limit) {
      this.lines.shift();
    }
  }

  text(): string {
    return this.lines.join("\n");
  }
}

async function waitForDeath(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isProcessAlive(pid)) {
    if (Date.now() >= deadline) {
      return false;
    }
    await sleep(50);
  }
  return true;
}

function signalQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
