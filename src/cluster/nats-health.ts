// NATS health as JetStream's API shows it to an ordinary account: the server we talk to, each stream's leader and replicas.

import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { ShardStream } from "../stream/streams.js";
import type { NatsHealth, StreamHealth } from "./status-model.js";

export async function readNatsHealth(nc: NatsConnection, jsm: JetStreamManager, streams: readonly ShardStream[]): Promise<NatsHealth> {
  const health: NatsHealth = {
    connected: !nc.isClosed(),
    server: nc.getServer(),
    serverName: nc.info?.server_name ?? "",
    metaLeader: null,
    jetstreamAnswering: null,
    streams: [],
  };
  try {
    await jsm.getAccountInfo();
    health.jetstreamAnswering = true;
  } catch (err) {
    health.jetstreamAnswering = false;
    health.error = `JetStream does not answer (no meta leader?): ${(err as Error).message}`;
  }
  for (const { stream } of streams) health.streams.push(await streamHealth(jsm, stream));
  return health;
}

async function streamHealth(jsm: JetStreamManager, stream: string): Promise<StreamHealth> {
  try {
    const info = await jsm.streams.info(stream);
    const cluster = info.cluster;
    // The leader is current by definition; the API lists only the followers under replicas.
    const replicas = [
      ...(cluster?.leader ? [{ name: cluster.leader, current: true, offline: false, lag: 0 }] : []),
      ...(cluster?.replicas ?? []).map((r) => ({ name: r.name, current: r.current, offline: r.offline ?? false, lag: r.lag ?? 0 })),
    ];
    return { stream, messages: info.state.messages, lastSeq: info.state.last_seq, leader: cluster?.leader ?? "", replicas };
  } catch (err) {
    return { stream, messages: 0, lastSeq: 0, leader: "", replicas: [], error: (err as Error).message ?? String(err) };
  }
}

/** What a reader without a connection shows. */
export function disconnectedHealth(reason: string): NatsHealth {
  return { connected: false, server: "", serverName: "", metaLeader: null, jetstreamAnswering: null, streams: [], error: reason };
}
