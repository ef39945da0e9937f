// `marmot -config FILE -status`: the cluster as the heartbeats in NATS and this database show it, as tables; the exit
// code says whether all is well.

import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { membershipBucket, readHeartbeats } from "../cluster/membership.js";
import { readNatsHealth } from "../cluster/nats-health.js";
import { clusterProblems, NO_HEARTBEATS, observed, type ClusterStatus, type NatsHealth, type NodeStatus } from "../cluster/status-model.js";
import { parseHostPort } from "../config/address.js";
import type { Config } from "../config/types.js";
import type { Logger } from "../log.js";
import { embeddedStoreDir } from "../node.js";
import { openDatabase } from "../sqlite/open.js";
import { countParked } from "../sqlite/parked.js";
import { connectNats } from "../stream/connect.js";
import { runningServerUrl } from "../stream/embedded-server.js";
import { shardStreams } from "../stream/streams.js";
import { ago, formatTable } from "./table.js";

/** Exit codes of marmot -status (2 is a bad flag or config, as for every command). */
export const STATUS_HEALTHY = 0;
export const STATUS_UNHEALTHY = 1;
export const STATUS_NO_NATS = 3;

const CONNECT_TIMEOUT_MS = 5000;

/** Where to reach NATS: [nats] urls, or the embedded server of this config's marmot; a sentence when there is none. */
function natsServers(config: Config): string[] | string {
  if (config.nats.urls.length > 0) return config.nats.urls;
  const storeDir = embeddedStoreDir(config);
  const url = runningServerUrl(storeDir, config.nats.bindAddress);
  if (url !== undefined) return [url];
  // A fixed client port: the server may run from elsewhere (a store dir moved, a wrapper); worth a try.
  const bind = parseHostPort(config.nats.bindAddress, { anyPort: true });
  if (bind !== undefined && bind.port > 0) return [`nats://${["", "0.0.0.0", "[::]"].includes(bind.host) ? "127.0.0.1" : bind.host}:${bind.port}`];
  return (
    `no NATS server to ask: this config uses the embedded nats-server, and none runs from ${storeDir} ` +
    `(is marmot running with this config, node ${config.nodeId}?). Start it, or set [nats] urls to reach the cluster's servers`
  );
}

export async function statusCommand(config: Config, logger: Logger, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const localParked = readLocalParked(config, logger);
  const servers = natsServers(config);
  if (typeof servers === "string") {
    logger.error(servers);
    if (localParked > 0) out.write(`this database has ${localParked} parked change(s): see marmot -config FILE -parked\n`);
    return STATUS_NO_NATS;
  }
  let nc: NatsConnection;
  try {
    nc = await connectNats({
      servers,
      nats: config.nats,
      name: `marmot-status-${config.nodeId}`,
      logger: logger.child({ component: "nats" }),
      signal: AbortSignal.timeout(CONNECT_TIMEOUT_MS),
    });
  } catch (err) {
    const hint = config.nats.urls.length === 0 ? ` (the embedded server of node ${config.nodeId}: is marmot running with this config?)` : "";
    logger.error(`cannot reach NATS at ${servers.join(", ")}${hint} within ${CONNECT_TIMEOUT_MS / 1000} s: ${(err as Error).message}`);
    return STATUS_NO_NATS;
  }
  try {
    const now = Date.now();
    // With replicas = 1 the bucket lives on one server: when that one is down, the heartbeats cannot be read.
    let unreadable: string | undefined;
    const nodes = (
      await readHeartbeats(nc, config).catch((err: Error) => {
        unreadable = `cannot read the nodes' heartbeats from the bucket ${membershipBucket(config)}: ${err.message}`;
        return [];
      })
    ).map((n) => observed(n, now));
    // This database's own count: the node may not run, or not have written it yet.
    const self = nodes.find((n) => n.id === config.nodeId);
    if (self !== undefined) self.parkedChanges = Math.max(self.parkedChanges, localParked);
    const jsm = await jetstreamManager(nc, { checkAPI: false });
    const nats = await readNatsHealth(nc, jsm, shardStreams(config));
    const status: ClusterStatus = { generatedAt: now, self: "", heartbeatsReadAt: now, nodes, nats, history: [] };
    // An unreadable bucket says more than "no heartbeats".
    const problems = unreadable === undefined ? clusterProblems(status) : [unreadable, ...clusterProblems(status).filter((p) => p !== NO_HEARTBEATS)];
    if (self === undefined && localParked > 0) problems.push(`this database (node ${config.nodeId}) has ${localParked} parked change(s)`);
    out.write(render(status, problems, now));
    return problems.length === 0 ? STATUS_HEALTHY : STATUS_UNHEALTHY;
  } finally {
    await nc.close().catch(() => undefined);
  }
}

function readLocalParked(config: Config, logger: Logger): number {
  try {
    const db = openDatabase(config.dbPath, logger);
    try {
      return countParked(db);
    } finally {
      db.close();
    }
  } catch (err) {
    logger.warn("could not read the parked changes of the local database", { db: config.dbPath, reason: (err as Error).message });
    return 0;
  }
}

function render(status: ClusterStatus, problems: string[], now: number): string {
  const nodes = formatTable(
    ["NODE", "STATE", "LAST SEEN", "VERSION", "PENDING", "PARKED", "SNAPSHOT", "NATS SERVER"],
    status.nodes.map((n: NodeStatus) => [
      n.id,
      n.state,
      ago(now - n.lastSeen),
      n.version,
      String(n.pendingChanges),
      String(n.parkedChanges),
      n.lastSnapshot ? ago(now - n.lastSnapshot.takenAt) : "none",
      n.natsServer || "-",
    ]),
  );
  const shards = formatTable(
    ["NODE", "SHARD", "STREAM", "APPLIED", "LAST SEQ", "LAG", "AGREEMENT"],
    status.nodes.flatMap((n) =>
      n.shards.map((s) => [n.id, String(s.shard), s.stream, String(s.applied), String(s.lastSeq ?? "?"), String(s.lag ?? "?"), s.agreement]),
    ),
  );
  return [
    nodes,
    shards,
    renderNats(status.nats),
    problems.length === 0 ? "all nodes ready\n" : `problems:\n${problems.map((p) => `  - ${p}\n`).join("")}`,
  ].join("\n");
}

function renderNats(nats: NatsHealth): string {
  const leader =
    nats.metaLeader ??
    (nats.jetstreamAnswering === true
      ? "elected (name not visible to this account; the servers' /jsz shows it)"
      : nats.jetstreamAnswering === false
        ? "none: JetStream does not answer"
        : "unknown");
  const head = `NATS: connected to ${nats.serverName || "?"} (${nats.server}); meta leader: ${leader}\n`;
  const streams = formatTable(
    ["STREAM", "LEADER", "REPLICAS", "MESSAGES"],
    nats.streams.map((s) => [
      s.stream,
      s.leader || "-",
      s.error ??
        (s.replicas.map((r) => `${r.name}${r.offline ? " (offline)" : r.current ? "" : ` (behind ${r.lag})`}`).join(", ") || "single server"),
      String(s.messages),
    ]),
  );
  return head + streams;
}
