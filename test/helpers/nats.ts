// Real nats-server processes for tests: one server, or a routed JetStream cluster, on loopback.

import { execFileSync, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { readServerInfo } from "../../src/stream/connect.js";
import { findNatsServer } from "../../src/stream/nats-binary.js";
import { freePort, freePorts } from "./ports.js";
import { isAlive, killPid, spawnTracked } from "./processes.js";

export type NatsAuth = { user: string; pass: string } | { token: string } | { nkeyPublic: string };

export interface NatsServerOptions {
  /** default true */
  jetstream?: boolean;
  /** client port on 127.0.0.1; default: a free one, kept across restart() */
  port?: number;
  auth?: NatsAuth;
  tls?: { cert: string; key: string; ca?: string; verify?: boolean };
  cluster?: { port: number; routes: string[]; name?: string };
  /** accept leaf node connections on 127.0.0.1:<port> */
  leafnodePort?: number;
  /** default: a fresh temporary directory, removed when the test process exits */
  storeDir?: string;
  serverName?: string;
}

export interface TestNatsServer {
  /** nats://127.0.0.1:<port> (credentials not included) */
  readonly url: string;
  readonly port: number;
  /** the current process; changes on restart() */
  readonly pid: number;
  readonly storeDir: string;
  readonly configFile: string;
  /** SIGTERM, SIGKILL after a grace period; resolves once the process is gone */
  stop(): Promise<void>;
  /** sends a signal and returns at once (SIGKILL by default: a crash) */
  kill(signal?: NodeJS.Signals): void;
  /** stops the server if it runs, then starts it again with the same config, port and store */
  restart(): Promise<void>;
  /** its last lines of output, for assertion messages */
  output(): string;
}

export interface TestNatsCluster {
  servers: TestNatsServer[];
  /** client URLs of all servers */
  urls: string[];
  stop(): Promise<void>;
}

const tempDirs: string[] = [];
process.on("exit", () => {
  for (const dir of tempDirs) {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A temporary directory removed when the test process exits. */
/** The version of the nats-server the tests and marmot start, e.g. [2, 10, 27]. */
export function natsServerVersion(): [number, number, number] {
  const text = execFileSync(findNatsServer(), ["--version"], { encoding: "utf8" });
  const match = /v(\d+)\.(\d+)\.(\d+)/.exec(text);
  if (!match) throw new Error(`cannot read the version of nats-server from ${JSON.stringify(text)}`);
  return [Number(match[1]), Number(match[2]), Number(match[3])];
}

export function tempDir(prefix = "marmot-test-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

/** Starts one nats-server from a generated config; resolves once it accepts connections. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<TestNatsServer> {
  const port = options.port ?? (await freePort());
  const storeDir = options.storeDir ?? tempDir("marmot-nats-");
  mkdirSync(storeDir, { recursive: true });
  const configFile = join(storeDir, "test-server.conf");
  writeFileSync(configFile, renderConfig(options, port, storeDir));
  const server = new ServerProcess(configFile, port, storeDir);
  await server.start();
  return server;
}

/**
 * Starts size routed JetStream servers and resolves once a stream replicated min(size, 3) times can be created.
 * A cluster that is not ready in 20 s is started once more from scratch: nats-server 2.10.27 now and then leaves
 * one server of a new cluster out of the JetStream meta group, and R3 streams are then never placed (README, limits).
 */
export async function startNatsCluster(size = 3, options: { name?: string } = {}): Promise<TestNatsCluster> {
  try {
    return await startNatsClusterOnce(size, options, 20_000);
  } catch (err) {
    console.log(`# starting the test NATS cluster again: ${(err as Error).message.split("\n")[0]}`);
    return startNatsClusterOnce(size, options, 30_000);
  }
}

async function startNatsClusterOnce(size: number, options: { name?: string }, readyMs: number): Promise<TestNatsCluster> {
  const ports = await freePorts(size * 2);
  const clientPorts = ports.slice(0, size);
  const clusterPorts = ports.slice(size);
  const servers = await Promise.all(
    clientPorts.map((port, i) =>
      startNatsServer({
        port,
        serverName: `test-n${i + 1}`,
        cluster: {
          port: clusterPorts[i]!,
          routes: clusterPorts.filter((_, j) => j !== i).map((p) => `nats://127.0.0.1:${p}`),
          name: options.name ?? "marmot-test",
        },
      }),
    ),
  );
  const cluster: TestNatsCluster = {
    servers,
    urls: servers.map((s) => s.url),
    stop: async () => {
      await Promise.all(servers.map((s) => s.stop()));
    },
  };
  try {
    await waitForReplicatedStream(cluster.urls, Math.min(size, 3), readyMs);
  } catch (err) {
    const outputs = servers.map((s, i) => `--- server ${i + 1} ---\n${s.output()}`).join("\n");
    await cluster.stop();
    throw new Error(`the test cluster did not become ready: ${(err as Error).message}\n${outputs}`, { cause: err });
  }
  return cluster;
}

/** Polls until an R<replicas> stream can be created (the meta leader exists and enough peers are known). */
export async function waitForReplicatedStream(urls: string[], replicas: number, timeoutMs: number): Promise<void> {
  const nc = await connect({ servers: urls, maxReconnectAttempts: -1, timeout: 5000 });
  try {
    const deadline = Date.now() + timeoutMs;
    const name = `READY_CHECK_${process.pid}_${Date.now()}`;
    let lastError: unknown;
    while (Date.now() < deadline) {
      try {
        const jsm = await jetstreamManager(nc, { checkAPI: false, timeout: 5000 });
        await jsm.streams.add({ name, subjects: [`ready-check.${name}`], num_replicas: replicas });
        await jsm.streams.delete(name);
        return;
      } catch (err) {
        lastError = err;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    throw new Error(`no R${replicas} stream could be created within ${timeoutMs} ms: ${String(lastError)}`);
  } finally {
    await nc.close();
  }
}

class ServerProcess implements TestNatsServer {
  private child: ChildProcess | undefined;
  private exitedPromise: Promise<void> = Promise.resolve();
  private readonly lines: string[] = [];
  readonly url: string;

  constructor(
    readonly configFile: string,
    readonly port: number,
    readonly storeDir: string,
  ) {
    this.url = `nats://127.0.0.1:${port}`;
  }

  get pid(): number {
    return this.child?.pid ?? -1;
  }

  async start(): Promise<void> {
    const child = spawnTracked(findNatsServer(), ["-c", this.configFile]);
    this.child = child;
    let exited = false;
    this.exitedPromise = new Promise((resolve) => {
      child.once("close", () => {
        exited = true;
        resolve();
      });
    });
    for (const stream of [child.stdout, child.stderr]) {
      if (stream !== null) {
        createInterface({ input: stream }).on("line", (line) => {
          this.lines.push(line);
          if (this.lines.length > 40) {
            this.lines.shift();
          }
        });
      }
    }
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (exited) {
        throw new Error(`nats-server (${this.configFile}) exited during start:\n${this.output()}`);
      }
      try {
        await readServerInfo("127.0.0.1", this.port, 1000);
        return;
      } catch {
        if (Date.now() > deadline) {
          await this.stop();
          throw new Error(`nats-server (${this.configFile}) did not accept connections within 20 s:\n${this.output()}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child?.pid === undefined) {
      return;
    }
    await killPid(child.pid, 5000);
    await this.exitedPromise;
  }

  kill(signal: NodeJS.Signals = "SIGKILL"): void {
    if (this.child?.pid !== undefined && isAlive(this.child.pid)) {
      this.child.kill(signal);
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  output(): string {
    return this.lines.join("\n");
  }
}

function renderConfig(options: NatsServerOptions, port: number, storeDir: string): string {
  const q = (value: string) => JSON.stringify(value);
  const lines = [`listen: ${q(`127.0.0.1:${port}`)}`];
  if (options.serverName !== undefined) {
    lines.push(`server_name: ${q(options.serverName)}`);
  }
  if (options.jetstream ?? true) {
    lines.push(`jetstream { store_dir: ${q(storeDir)} }`);
  }
  const auth = options.auth;
  if (auth !== undefined) {
    if ("user" in auth) {
      lines.push(`authorization { user: ${q(auth.user)}, password: ${q(auth.pass)} }`);
    } else if ("token" in auth) {
      lines.push(`authorization { token: ${q(auth.token)} }`);
    } else {
      lines.push(`authorization { users: [ { nkey: ${q(auth.nkeyPublic)} } ] }`);
    }
  }
  if (options.tls !== undefined) {
    const tls = options.tls;
    lines.push(
      "tls {",
      `  cert_file: ${q(tls.cert)}`,
      `  key_file: ${q(tls.key)}`,
      ...(tls.ca !== undefined ? [`  ca_file: ${q(tls.ca)}`] : []),
      `  verify: ${tls.verify === true}`,
      "  timeout: 2",
      "}",
    );
  }
  if (options.leafnodePort !== undefined) {
    lines.push(`leafnodes { listen: ${q(`127.0.0.1:${options.leafnodePort}`)} }`);
  }
  if (options.cluster !== undefined) {
    const cluster = options.cluster;
    lines.push(
      "cluster {",
      `  name: ${q(cluster.name ?? "marmot-test")}`,
      `  listen: ${q(`127.0.0.1:${cluster.port}`)}`,
      `  routes: [${cluster.routes.map(q).join(", ")}]`,
      "}",
    );
  }
  return lines.join("\n") + "\n";
}
