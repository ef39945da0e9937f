// The status model: what a node says of itself in its heartbeat, and the picture of the cluster built from them.

/** What a node is doing. "unreachable" is never written by a node: readers derive it from a heartbeat gone stale. */
export type NodeState = "starting" | "catching up" | "ready" | "restoring" | "stopped" | "unreachable";

/** Whether a shard's data on a node matches the other nodes' (from the table digests), or not known. */
export type Agreement = "agree" | "differ" | "unknown";

/**
 * Where agreement comes from: the per-shard table digests, when that module is plugged in. Keyed by node id, then
 * shard number; a node or shard it does not name is "unknown".
 */
export interface AgreementSource {
  summary(): AgreementSummary;
}

export type AgreementSummary = Readonly<Record<string, Readonly<Record<number, Agreement>>>>;

export interface ShardStatus {
  shard: number;
  stream: string;
  /** the last stream sequence applied to this node's database */
  applied: number;
  /** the stream's last sequence at the node's last look; null before the first */
  lastSeq: number | null;
  /** lastSeq - applied; null when not known */
  lag: number | null;
  agreement: Agreement;
}

export interface SnapshotStatus {
  /** when the last snapshot was taken, ms since the epoch */
  takenAt: number;
  sizeBytes: number;
}

/** One node, as its heartbeat says. */
export interface NodeStatus {
  id: string;
  version: string;
  state: NodeState;
  /** why the node is not ready (empty when it is) */
  reason: string;
  /** ms since the epoch, the node's clock */
  lastSeen: number;
  startedAt: number;
  /** changes captured here and not yet stored in JetStream */
  pendingChanges: number;
  /** replicated changes this node set aside (see marmot -parked) */
  parkedChanges: number;
  lastSnapshot: SnapshotStatus | null;
  /** the NATS server the node's client is connected to */
  natsServer: string;
  publish: boolean;
  replicate: boolean;
  shards: ShardStatus[];
}

export interface StreamReplicaHealth {
  name: string;
  current: boolean;
  offline: boolean;
  /** operations behind the leader */
  lag: number;
}

export interface StreamHealth {
  stream: string;
  messages: number;
  lastSeq: number;
  /** server name of the stream's leader; "" when it has none (or JetStream is not clustered) */
  leader: string;
  replicas: StreamReplicaHealth[];
  /** why the stream's state is not known */
  error?: string;
}

export interface NatsHealth {
  connected: boolean;
  /** the server this reader is connected to */
  server: string;
  serverName: string;
  /**
   * The JetStream meta leader. JetStream's API tells an ordinary account no more than the stream leaders: it is
   * filled only where it can be known, else null (the servers' /jsz monitoring endpoint shows it).
   */
  metaLeader: string | null;
  /**
   * Whether JetStream's account API answers: in a cluster only with a meta leader elected, so false means none
   * (a majority of the servers is down or cut off); null when not checked.
   */
  jetstreamAnswering: boolean | null;
  streams: StreamHealth[];
  error?: string;
}

/** One point of the plot: summed over the node's shards. */
export interface HistorySample {
  at: number;
  lag: number;
  /** changes applied per second since the previous sample */
  appliedPerSecond: number;
  /** changes published per second since the previous sample */
  publishedPerSecond: number;
}

/** Everything /status, the page and marmot -status show. */
export interface ClusterStatus {
  generatedAt: number;
  /** the node answering, or "" for marmot -status */
  self: string;
  /** when the other nodes' heartbeats were last read (ms since the epoch; 0 = not yet) */
  heartbeatsReadAt: number;
  nodes: NodeStatus[];
  nats: NatsHealth;
  /** the answering node's recent lag and throughput, oldest first */
  history: HistorySample[];
}

/** Heartbeats are written this often; three missed ones make a node unreachable. */
export const HEARTBEAT_INTERVAL_MS = 1500;
export const UNREACHABLE_AFTER_MS = 3 * HEARTBEAT_INTERVAL_MS + 500;

/** The state a reader shows: a node that stopped writing heartbeats without saying "stopped" is unreachable. */
export function observedState(node: NodeStatus, now: number): NodeState {
  if (node.state === "stopped") return "stopped";
  return now - node.lastSeen > UNREACHABLE_AFTER_MS ? "unreachable" : node.state;
}

/** The node as a reader sees it now: its state observed, and the reason an unreachable node is not ready. */
export function observed(node: NodeStatus, now: number): NodeStatus {
  const state = observedState(node, now);
  if (state === node.state) return node;
  return { ...node, state, reason: `no heartbeat for ${Math.round((now - node.lastSeen) / 1000)} s` };
}

export const NO_HEARTBEATS = "no node has written a heartbeat";

/** Why the cluster is not healthy, one line per problem; empty when every node is ready, agrees and has nothing parked. */
export function clusterProblems(status: ClusterStatus): string[] {
  const problems: string[] = [];
  if (status.nodes.length === 0) problems.push(NO_HEARTBEATS);
  if (status.nats.jetstreamAnswering === false) problems.push(`JetStream does not answer: ${status.nats.error ?? "no meta leader?"}`);
  for (const node of status.nodes) {
    if (node.state !== "ready") problems.push(`node ${node.id} is ${node.state}${node.reason ? `: ${node.reason}` : ""}`);
    if (node.parkedChanges > 0) problems.push(`node ${node.id} has ${node.parkedChanges} parked change(s) (see marmot -parked)`);
    for (const shard of node.shards) {
      if (shard.agreement === "differ") problems.push(`node ${node.id} differs from the others on shard ${shard.shard}`);
    }
  }
  return problems;
}
