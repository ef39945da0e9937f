// Membership through NATS: each node puts its status into a KV bucket every heartbeat; anyone reads them all back.

import { Kvm, type KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Config } from "../config/types.js";
import type { NodeStatus } from "./status-model.js";

/**
 * How long a node's last heartbeat stays in the bucket: a stopped or vanished node is shown (as stopped or
 * unreachable) this long, then forgotten, so a node taken out of the cluster for good does not haunt it.
 */
export const HEARTBEAT_KEEP_MS = 15 * 60_000;

/** One bucket per cluster, named after the streams, so two clusters sharing a NATS account do not mix. */
export function membershipBucket(config: Pick<Config, "nats">): string {
  return `${config.nats.streamPrefix}-nodes`;
}

/** KV keys allow letters, digits and -_=/. only; node ids are decimal, but the key must never be refused. */
function heartbeatKey(nodeId: string): string {
  return `node-${nodeId.replace(/[^A-Za-z0-9_=-]/g, "_")}`;
}

/** A node's own side: creates the bucket when missing and writes its status. */
export class HeartbeatWriter {
  private constructor(
    private readonly kv: KV,
    private readonly key: string,
  ) {}

  /**
   * `replicas` must be at most the servers JetStream has: the node passes the replica count of its streams, which
   * JetStream has placed already. An existing bucket is used as it is.
   */
  static async open(nc: NatsConnection, config: Config, replicas: number): Promise<HeartbeatWriter> {
    const kv = await new Kvm(nc).create(membershipBucket(config), {
      history: 1,
      ttl: HEARTBEAT_KEEP_MS,
      replicas,
      description: "marmot: one heartbeat per node, its status as JSON",
    });
    return new HeartbeatWriter(kv, heartbeatKey(config.nodeId));
  }

  async write(status: NodeStatus): Promise<void> {
    await this.kv.put(this.key, JSON.stringify(status));
  }
}

/** Every heartbeat in the bucket, by node id; an empty list when the bucket does not exist (no node ran yet). */
export async function readHeartbeats(nc: NatsConnection, config: Pick<Config, "nats">): Promise<NodeStatus[]> {
  let kv: KV;
  const keys: string[] = [];
  try {
    kv = await new Kvm(nc).open(membershipBucket(config));
    for await (const key of await kv.keys()) keys.push(key);
  } catch (err) {
    if (/stream not found|bucket not found|not found/i.test((err as Error).message ?? "")) return [];
    throw err;
  }
  const nodes: NodeStatus[] = [];
  for (const key of keys) {
    const entry = await kv.get(key);
    if (entry === null || entry.operation !== "PUT" || entry.length === 0) continue;
    try {
      nodes.push(JSON.parse(entry.string()) as NodeStatus);
    } catch {
      // A value that is not a heartbeat (someone else's key in the bucket): not a node.
    }
  }
  return nodes.sort((a, b) => compareIds(a.id, b.id));
}

/** Node ids are decimal strings: 2 before 10. */
function compareIds(a: string, b: string): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}
