// How often a new three-server cluster, started the way marmot starts its embedded servers, cannot place an R3
// stream. Each run starts three servers at once (with a monitoring port each), waits for JetStream, and creates an
// R3 stream; a run that is refused for --stall-seconds is a stall, and the meta leader's /raftz says which server
// it left out. With --restart, that server is then restarted and the time to placement after it is printed.
//
//   npm run build && node dist/bench/placement.js --runs 40
//   options: --runs N (default 20), --stall-seconds N (default 20), --restart
//   MARMOT_NATS_SERVER=/path/to/nats-server picks the server (else the one marmot would use)
//
// Stalls were rare on an idle machine; run a load beside it to see them, e.g. `yes > /dev/null` twice and
// `while true; do dd if=/dev/zero of=/tmp/dd bs=1M count=64 conv=fsync status=none; done`.

import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { JetStreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import type { Logger } from "../src/log.js";
import { EmbeddedServer, type EmbeddedServerOptions } from "../src/stream/embedded-server.js";
import { waitForJetStream } from "../src/stream/jetstream-ready.js";
import { findNatsServer } from "../src/stream/nats-binary.js";
import { sleep } from "../src/sleep.js";
import { tempDir } from "../test/helpers/nats.js";
import { freePorts } from "../test/helpers/ports.js";
import { killAll, trackPid } from "../test/helpers/processes.js";

interface Settings {
  runs: number;
  stallMs: number;
  restart: boolean;
}

interface MetaRaft {
  id: string;
  state: string;
  peers: Record<string, unknown>;
}

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };

function parseArgs(argv: string[]): Settings {
  const settings: Settings = { runs: 20, stallMs: 20_000, restart: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${arg} needs a positive whole number`);
      return n;
    };
    if (arg === "--runs") settings.runs = value();
    else if (arg === "--stall-seconds") settings.stallMs = value() * 1000;
    else if (arg === "--restart") settings.restart = true;
    else throw new Error(`unknown option ${arg} (options: --runs N, --stall-seconds N, --restart)`);
  }
  return settings;
}

async function metaRaft(monitorPort: number): Promise<MetaRaft | undefined> {
  try {
    const body = (await (await fetch(`http://127.0.0.1:${monitorPort}/raftz`)).json()) as Record<string, Record<string, MetaRaft>>;
    return body["$SYS"]?.["_meta_"];
  } catch {
    return undefined;
  }
}

/** The index of the server the meta leader does not list among its peers, if exactly that is the picture. */
async function leftOut(monitorPorts: number[]): Promise<number | undefined> {
  const metas = await Promise.all(monitorPorts.map(metaRaft));
  const leader = metas.find((m) => m?.state === "LEADER");
  if (leader === undefined) return undefined;
  const index = metas.findIndex((m) => m !== undefined && m !== leader && !(m.id in leader.peers));
  return index < 0 ? undefined : index;
}

async function tryPlace(jsm: JetStreamManager): Promise<string | undefined> {
  try {
    await jsm.streams.add({ name: "PLACEMENT", subjects: ["placement.>"], num_replicas: 3 });
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** Tries to place the stream until it is placed (undefined) or `ms` have passed (JetStream's last refusal). */
async function placeWithin(jsm: JetStreamManager, ms: number): Promise<string | undefined> {
  const deadline = Date.now() + ms;
  let refusal = await tryPlace(jsm);
  while (refusal !== undefined && Date.now() < deadline) {
    await sleep(250);
    refusal = await tryPlace(jsm);
  }
  return refusal;
}

async function oneRun(run: number, settings: Settings): Promise<"placed" | "stalled"> {
  const dir = tempDir("marmot-placement-");
  const ports = await freePorts(6);
  const routePorts = ports.slice(0, 3);
  const monitorPorts = ports.slice(3);
  const routes = routePorts.map((p) => `nats://127.0.0.1:${p}/`);
  const options: EmbeddedServerOptions[] = routePorts.map((port, i) => {
    const storeDir = join(dir, `s${i + 1}`);
    mkdirSync(storeDir, { recursive: true });
    const extra = join(storeDir, "monitor.conf");
    writeFileSync(extra, `http: "127.0.0.1:${monitorPorts[i]}"\n`);
    return {
      serverName: `marmot-node-${i + 1}`,
      storeDir,
      bindAddress: "127.0.0.1:-1",
      clusterAddr: `127.0.0.1:${port}`,
      clusterPeers: routes,
      leafServers: [],
      serverConfig: extra,
    };
  });
  const start = async (o: EmbeddedServerOptions) => {
    const server = await EmbeddedServer.start(o, quiet);
    trackPid(server.pid);
    return server;
  };
  const servers = await Promise.all(options.map(start));
  const nc = await connect({ servers: servers.map((s) => s.clientUrl), maxReconnectAttempts: -1 });
  try {
    const startedAt = Date.now();
    const jsm = await waitForJetStream(nc, quiet);
    const answeredMs = Date.now() - startedAt;
    const refusal = await placeWithin(jsm, settings.stallMs);
    if (refusal === undefined) {
      console.log(`run ${run}: placed ${Date.now() - startedAt} ms after the start (JetStream answered after ${answeredMs} ms)`);
      return "placed";
    }
    const out = await leftOut(monitorPorts);
    const who = out === undefined ? "the meta leader lists every server" : `the meta leader does not list server ${out + 1}`;
    console.log(`run ${run}: STALLED, refused for ${settings.stallMs / 1000} s ("${refusal}"); ${who}`);
    if (settings.restart && out !== undefined) {
      await servers[out]!.stop();
      servers[out] = await start(options[out]!);
      const restartedAt = Date.now();
      const again = await placeWithin(jsm, settings.stallMs);
      const outcome = again === undefined ? `placed ${Date.now() - restartedAt} ms later` : `still refused ("${again}")`;
      console.log(`run ${run}: restarted server ${out + 1}: ${outcome}`);
    }
    return "stalled";
  } finally {
    await nc.close();
    await Promise.all(servers.map((s) => s.stop()));
  }
}

async function main(settings: Settings): Promise<void> {
  const binary = findNatsServer();
  console.log(`${execFileSync(binary, ["--version"], { encoding: "utf8" }).trim()} (${binary}); ${settings.runs} runs`);
  let stalled = 0;
  for (let run = 1; run <= settings.runs; run++) {
    if ((await oneRun(run, settings)) === "stalled") stalled++;
  }
  console.log(`stalled: ${stalled} of ${settings.runs} starts`);
}

let settings: Settings;
try {
  settings = parseArgs(process.argv.slice(2));
} catch (err) {
  console.error(`placement: ${(err as Error).message}`);
  process.exit(2);
}

main(settings).then(
  () => process.exit(0),
  async (err: unknown) => {
    console.error(err);
    await killAll();
    process.exit(1);
  },
);
