// This node's status as it goes: its state and readiness, what its heartbeat says, and the cluster it sees.

import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Config } from "../config/types.js";
import type { Logger } from "../log.js";
import type { Metrics } from "../metrics.js";
import { orAbort, sleep } from "../sleep.js";
import type { ShardStream } from "../stream/streams.js";
import { HeartbeatWriter, membershipBucket, readHeartbeats } from "./membership.js";
import { disconnectedHealth, readNatsHealth } from "./nats-health.js";
import {
  HEARTBEAT_INTERVAL_MS,
  observed,
  type AgreementSource,
  type ClusterStatus,
  type HistorySample,
  type NatsHealth,
  type NodeState,
  type NodeStatus,
  type SnapshotStatus,
} from "./status-model.js";

/** One shard as this node applies it (a ShardConsumer). */
export interface ShardProgress {
  readonly stream: string;
  appliedSequence(): number;
  streamEnd(): Promise<number>;
}

/** What only the database knows. */
export interface LocalCounts {
  pendingChanges(): number;
  parkedChanges(): number;
}

export interface Readiness {
  ready: boolean;
  /** why not, or "ready" */
  reason: string;
}

/** Ten minutes of samples for the plot. */
const HISTORY_SAMPLES = Math.ceil((10 * 60_000) / HEARTBEAT_INTERVAL_MS);
/** A look at NATS that takes longer than this is given up: the next heartbeat tries again. */
const NATS_CALL_TIMEOUT_MS = 4000;

interface ShardEntry {
  shard: number;
  progress: ShardProgress;
  /** the stream's last sequence at the node's first look after attaching: reaching it means caught up */
  target: number | null;
  lastSeq: number | null;
}

export class NodeStatusTracker {
  private readonly startedAt = Date.now();
  private startingFor = "opening the database";
  private attached = false;
  private caughtUp = false;
  private stopping = false;
  private restoring = false;
  private lastSnapshot: SnapshotStatus | null = null;
  private agreement: AgreementSource | undefined;
  private nc: NatsConnection | undefined;
  private jsm: JetStreamManager | undefined;
  private streams: readonly ShardStream[] = [];
  private shards: ShardEntry[] = [];
  private writer: HeartbeatWriter | undefined;
  private heartbeatFailing = false;
  /** why NATS is not usable now, "" when it is */
  private natsProblem = "";
  private others: NodeStatus[] = [];
  /** when `others` was read; 0 = never */
  private othersReadAt = 0;
  private natsHealth: NatsHealth = disconnectedHealth("not connected yet");
  private readonly history: HistorySample[] = [];
  private previousCounts = { at: Date.now(), applied: 0, published: 0 };
  private readyListener: (() => void) | undefined;

  constructor(
    private readonly config: Config,
    private readonly version: string,
    private readonly counts: LocalCounts,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
  ) {}

  /** Called once, the first time the node is ready. */
  onReady(listener: () => void): void {
    this.readyListener = listener;
  }

  /** What the node waits for while it starts ("connecting to NATS", ...), for /readyz. */
  startingStep(step: string): void {
    this.startingFor = step;
  }

  /** Set while the database is being restored from a snapshot. */
  setRestoring(restoring: boolean): void {
    this.restoring = restoring;
  }

  /** The last snapshot this node took or restored from. */
  setLastSnapshot(snapshot: SnapshotStatus | null): void {
    this.lastSnapshot = snapshot;
  }

  setAgreementSource(source: AgreementSource): void {
    this.agreement = source;
  }

  /**
   * NATS is there and the streams exist: from now on the node catches up to where the streams end at its first
   * look, and writes its heartbeat (see run). `shards` is empty on a node that does not apply (replicate = false).
   */
  attach(nc: NatsConnection, jsm: JetStreamManager, streams: readonly ShardStream[], shards: readonly ShardProgress[]): void {
    this.nc = nc;
    this.jsm = jsm;
    this.streams = streams;
    const shardOf = new Map(streams.map((s) => [s.stream, s.shard]));
    this.shards = shards.map((progress) => ({ shard: shardOf.get(progress.stream) ?? 0, progress, target: null, lastSeq: null }));
    this.watchConnection(nc);
    this.attached = true;
    this.checkCaughtUp();
  }

  private watchConnection(nc: NatsConnection): void {
    void (async () => {
      for await (const status of nc.status()) {
        if (status.type === "disconnect") this.natsProblem = `lost the connection to NATS at ${status.server}; reconnecting`;
        else if (status.type === "reconnect") this.natsProblem = "";
      }
    })().catch(() => undefined);
  }

  private checkCaughtUp(): void {
    if (this.caughtUp || !this.attached) return;
    const behind = this.shards.find((s) => {
      const applied = s.progress.appliedSequence();
      return s.target === null || (applied < s.target && (s.lastSeq === null || applied < s.lastSeq));
    });
    if (behind !== undefined) return;
    this.caughtUp = true;
    this.readyListener?.();
  }

  private state(): NodeState {
    if (this.stopping) return "stopped";
    if (this.restoring) return "restoring";
    if (!this.attached) return "starting";
    return this.caughtUp ? "ready" : "catching up";
  }

  readiness(): Readiness {
    if (this.stopping) return { ready: false, reason: "stopping" };
    if (this.restoring) return { ready: false, reason: "restoring the database from a snapshot" };
    if (!this.attached) return { ready: false, reason: `starting: ${this.startingFor}` };
    if (this.nc?.isClosed()) return { ready: false, reason: "the NATS connection is closed" };
    if (this.natsProblem !== "") return { ready: false, reason: this.natsProblem };
    if (!this.caughtUp) {
      const behind = this.shards
        .filter((s) => s.target === null || s.progress.appliedSequence() < s.target)
        .map((s) =>
          s.target === null
            ? `${s.progress.stream}: its end not read yet`
            : `${s.progress.stream} applied ${s.progress.appliedSequence()} of ${s.target}`,
        );
      return { ready: false, reason: `catching up: ${behind.join(", ")}` };
    }
    return { ready: true, reason: "ready" };
  }

  /** What this node's heartbeat says now. */
  selfStatus(): NodeStatus {
    const readiness = this.readiness();
    const agreement = this.agreement?.summary()[this.config.nodeId] ?? {};
    return {
      id: this.config.nodeId,
      version: this.version,
      state: this.state(),
      // A stopped node is not waiting for anything: no reason to show.
      reason: readiness.ready || this.stopping ? "" : readiness.reason,
      lastSeen: Date.now(),
      startedAt: this.startedAt,
      pendingChanges: this.safeCount(() => this.counts.pendingChanges()),
      parkedChanges: this.safeCount(() => this.counts.parkedChanges()),
      lastSnapshot: this.lastSnapshot,
      natsServer: this.nc && !this.nc.isClosed() ? this.nc.getServer() : "",
      publish: this.config.publish,
      replicate: this.config.replicate,
      shards: this.shards.map((s) => {
        const applied = s.progress.appliedSequence();
        return {
          shard: s.shard,
          stream: s.progress.stream,
          applied,
          lastSeq: s.lastSeq,
          lag: s.lastSeq === null ? null : Math.max(0, s.lastSeq - applied),
          agreement: agreement[s.shard] ?? "unknown",
        };
      }),
    };
  }

  /** A closed database (while stopping) must not break a status answer. */
  private safeCount(count: () => number): number {
    try {
      return count();
    } catch {
      return 0;
    }
  }

  /** The cluster as this node sees it: the others' last heartbeats, and itself as it is now. */
  clusterStatus(): ClusterStatus {
    const now = Date.now();
    const self = this.selfStatus();
    // The others are judged as of the last reading: a reading that stalls (a NATS outage, the bucket's leader
    // moving) must not make healthy nodes look unreachable; heartbeatsReadAt tells how old the picture is.
    const asOf = Math.min(now, this.othersReadAt + HEARTBEAT_INTERVAL_MS);
    const others = this.others.filter((n) => n.id !== self.id).map((n) => observed(n, asOf));
    const nodes = [self, ...others];
    nodes.sort((a, b) => a.id.length - b.id.length || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const nats = this.natsProblem !== "" ? { ...this.natsHealth, connected: false, error: this.natsProblem } : this.natsHealth;
    return { generatedAt: now, self: self.id, heartbeatsReadAt: this.othersReadAt, nodes, nats, history: [...this.history] };
  }

  /** Every heartbeat: look at the streams, write the heartbeat, read the others'. Ends when `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await this.beat(signal).catch((err) => {
        if (!signal.aborted) this.logger.debug("status refresh failed", { reason: (err as Error).message });
      });
      await sleep(HEARTBEAT_INTERVAL_MS, signal).catch(() => undefined);
    }
  }

  private async beat(signal: AbortSignal): Promise<void> {
    this.sample();
    if (!this.attached || this.nc === undefined || this.jsm === undefined) return;
    const call = <T>(work: Promise<T>) => orAbort(work, AbortSignal.any([signal, AbortSignal.timeout(NATS_CALL_TIMEOUT_MS)]));
    for (const s of this.shards) {
      try {
        s.lastSeq = await call(s.progress.streamEnd());
        s.target ??= s.lastSeq;
      } catch {
        // Shown as the last value read; readiness follows the connection.
      }
    }
    this.checkCaughtUp();
    const nc = this.nc;
    try {
      if (this.writer === undefined) {
        // As many replicas as JetStream gave the streams: never more than it has servers.
        const first = this.streams[0];
        const replicas = first ? ((await call(this.jsm.streams.info(first.stream))).config.num_replicas ?? 1) : 1;
        this.writer = await call(HeartbeatWriter.open(nc, this.config, replicas));
      }
      await call(this.writer.write(this.selfStatus()));
      if (this.heartbeatFailing) this.logger.info("writing this node's heartbeat again");
      this.heartbeatFailing = false;
    } catch (err) {
      if (signal.aborted) return;
      // Once per outage: the other nodes show this one unreachable meanwhile.
      const level = this.heartbeatFailing ? "debug" : "warn";
      this.heartbeatFailing = true;
      this.logger[level]("could not write this node's heartbeat; the others show it unreachable until it can; trying every heartbeat", {
        bucket: membershipBucket(this.config),
        reason: (err as Error).message,
      });
    }
    try {
      this.others = await call(readHeartbeats(nc, this.config));
      this.othersReadAt = Date.now();
      this.natsHealth = await call(readNatsHealth(nc, this.jsm, this.streams));
    } catch (err) {
      if (signal.aborted) return;
      this.natsHealth = { ...this.natsHealth, connected: !nc.isClosed(), error: (err as Error).message };
    }
  }

  /** One point of the plot, and the event-loop gauge. */
  private sample(): void {
    const now = Date.now();
    const applied = this.metrics.applied.get();
    const published = this.metrics.published.get();
    const seconds = Math.max((now - this.previousCounts.at) / 1000, 0.001);
    const lag = this.shards.reduce((sum, s) => sum + (s.lastSeq === null ? 0 : Math.max(0, s.lastSeq - s.progress.appliedSequence())), 0);
    this.history.push({
      at: now,
      lag,
      appliedPerSecond: Math.round((applied - this.previousCounts.applied) / seconds),
      publishedPerSecond: Math.round((published - this.previousCounts.published) / seconds),
    });
    if (this.history.length > HISTORY_SAMPLES) this.history.splice(0, this.history.length - HISTORY_SAMPLES);
    this.previousCounts = { at: now, applied, published };
  }

  /** The node begins to stop: it is not ready any more. */
  markStopping(): void {
    this.stopping = true;
  }

  /** Once the heartbeat loop has ended: the last heartbeat says "stopped" (best effort, NATS may be gone). */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.writer === undefined || this.nc === undefined || this.nc.isClosed()) return;
    try {
      await orAbort(this.writer.write(this.selfStatus()), AbortSignal.timeout(2000));
    } catch (err) {
      this.logger.warn("could not write the last heartbeat; the other nodes will show this one unreachable rather than stopped", {
        reason: (err as Error).message,
      });
    }
  }
}
