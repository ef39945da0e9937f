// A running node's side of snapshots: restore when it cannot apply the streams from where it is, keep a snapshot
// fresh enough that every message the streams drop is covered, and answer other nodes that ask for one.
//
// A node's state is COMPLETE when it applies every stream from a point the stream still holds (no known gap: the
// start's restore decision found none, or its restore is done, and no consumer reported one since; a dropped run of
// only its own messages is no gap, see Applier.passOwnGap) and its consumers and shipper run. Only then does it save snapshots or answer requests: a snapshot of it then holds every change up
// to the sequences it records. The node sets `complete`; see MarmotNode.

import { rmSync } from "node:fs";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Config } from "../config/types.js";
import { SnapshotAccessError, SnapshotInvalidError, SnapshotStoreError } from "../errors.js";
import type { Logger } from "../log.js";
import { orAbort, sleep } from "../sleep.js";
import type { ShardStream } from "../stream/streams.js";
import { snapshotDue } from "./freshness.js";
import type { HeldLease } from "./lease.js";
import { coverageNeeded, covers, decideRestore, type Coverage, type ShardPosition } from "./restore-decision.js";
import { askForSnapshot, SnapshotRequestListener, type SnapshotReply, type SnapshotRequest } from "./snapshot-requests.js";

/** What the node needs of a manifest. */
export interface ManifestFacts {
  object: string;
  size: number;
  createdAt: string;
  streams: Record<string, number>;
}

export interface RestoreFacts {
  streams: Record<string, number>;
  tables: number;
  rows: number;
  durationMs: number;
}

/** The snapshot engine and its store, as the node uses them (see snapshot-engine.ts for the real one). */
export interface SnapshotEngine {
  /** where snapshots are stored, for the logs */
  readonly description: string;
  latestManifest(): Promise<ManifestFacts | null>;
  /** Saves one; aborting `signal` abandons it before its manifest is written. */
  save(signal: AbortSignal): Promise<ManifestFacts>;
  /** Downloads and verifies the manifest's object; returns a local file the caller removes. */
  download(manifest: ManifestFacts, signal: AbortSignal): Promise<string>;
  /** Restores the file into the live database (one write transaction). */
  restore(file: string): RestoreFacts;
}

export interface SnapshotLeaseTaker {
  tryAcquire(): Promise<HeldLease | undefined>;
}

export interface NodeSnapshotsDeps {
  config: Config;
  nc: NatsConnection;
  jsm: JetStreamManager;
  streams: readonly ShardStream[];
  engine: SnapshotEngine;
  lease: SnapshotLeaseTaker;
  /** this node's applied sequence of a stream */
  appliedSequence: (stream: string) => number;
  hasUserTables: () => boolean;
  /** after a restore committed: the node reloads what it keeps in memory of the database */
  onRestored: (result: RestoreFacts) => void;
  /** seconds since the stored snapshot was made (a gauge) */
  /** the latest stored snapshot, each time this node reads or saves it (for its age metric and the status) */
  reportSnapshot?: (manifest: ManifestFacts) => void;
  /** the node's: aborts a save when the node stops */
  signal: AbortSignal;
  logger: Logger;
}

const FIRST_WAIT_MS = 1000;
const MAX_WAIT_MS = 10_000;
/** How long a cached manifest is trusted by the freshness check before it is read again. */
const MANIFEST_CACHE_MS = 10_000;
/** A manifest read that takes longer has stalled (it is a small object): the caller tries again later. */
const MANIFEST_TIMEOUT_MS = 30_000;
/** How long a node asked for a snapshot waits to have applied what the requester needs. */
const CATCH_UP_FOR_REQUEST_MS = 30_000;

export class NodeSnapshots {
  /** see the top of this file */
  complete = false;
  private saving: Promise<ManifestFacts | undefined> | undefined;
  /** a freshness check under way: the next one is skipped rather than queued */
  private checking = false;
  private cached: { manifest: ManifestFacts | null; at: number } | undefined;
  private readonly listener: SnapshotRequestListener;
  private reportedAccessError = "";

  constructor(private readonly deps: NodeSnapshotsDeps) {
    this.listener = new SnapshotRequestListener(deps.nc, deps.config.nats.subjectPrefix, (r) => this.answer(r), deps.logger);
  }

  /** The stored manifest, or a SnapshotStoreError when the store does not answer in time. */
  private latest(): Promise<ManifestFacts | null> {
    const timeout = AbortSignal.timeout(MANIFEST_TIMEOUT_MS);
    return orAbort(this.deps.engine.latestManifest(), AbortSignal.any([this.deps.signal, timeout])).catch((err: unknown) => {
      if (!timeout.aborted || this.deps.signal.aborted) throw err;
      throw new SnapshotStoreError(
        `reading the snapshot manifest from ${this.deps.engine.description} did not answer within ${MANIFEST_TIMEOUT_MS / 1000} s`,
      );
    });
  }

  /** Where each shard stands: this node's applied sequence and the stream's first and last sequences. */
  private async positions(): Promise<(ShardPosition & { maxMessages: number })[]> {
    return Promise.all(
      this.deps.streams.map(async ({ stream }) => {
        const info = await this.deps.jsm.streams.info(stream);
        return {
          stream,
          applied: this.deps.appliedSequence(stream),
          firstSeq: info.state.first_seq,
          lastSeq: info.state.last_seq,
          maxMessages: info.config.max_msgs,
        };
      }),
    );
  }

  /** At start, before consumers and shipper: restores when the rule in restore-decision.ts says so. */
  async restoreIfNeeded(signal: AbortSignal): Promise<RestoreFacts | undefined> {
    const positions = await this.retrying("read the streams' positions", () => this.positions(), signal);
    // A damaged manifest still says a snapshot was stored: the restore then waits for a good one.
    const readStored = () =>
      this.latest().then(
        (m) => m !== null,
        (err: unknown) => {
          if (err instanceof SnapshotInvalidError) return true;
          throw err;
        },
      );
    const snapshotStored = await this.retrying("read the latest snapshot manifest", readStored, signal);
    const decision = decideRestore({ shards: positions, hasUserTables: this.deps.hasUserTables(), snapshotStored });
    if (!decision.restore) return undefined;
    this.deps.logger.info("this node restores from a snapshot before applying the streams", {
      reason: decision.reason,
      needs: describe(decision.needs),
    });
    return this.restoreCovering(signal);
  }

  /** A consumer found a gap while running: restore from a snapshot that covers it (the node stopped replication). */
  async heal(signal: AbortSignal): Promise<RestoreFacts> {
    return this.restoreCovering(signal);
  }

  /**
   * Restores the latest snapshot once one covers every stream's dropped messages; until then asks the cluster for one
   * and waits, with backoff, saying what it waits for. Wrong credentials (SnapshotAccessError) are thrown.
   */
  private async restoreCovering(signal: AbortSignal): Promise<RestoreFacts> {
    const { engine, logger } = this.deps;
    let waitMs = FIRST_WAIT_MS;
    let lastReported = "";
    let reportedAt = 0;
    const startedAt = Date.now();
    for (;;) {
      signal.throwIfAborted();
      let waitingFor: string;
      try {
        // Read each time: the streams move on, and what must be covered with them.
        const needs = coverageNeeded(await this.positions());
        const manifest = await this.latest();
        if (manifest !== null && covers(manifest.streams, needs)) {
          const result = await this.restore(manifest, signal).catch((err: unknown) => {
            if (err instanceof SnapshotAccessError || err instanceof SnapshotInvalidError || signal.aborted) throw err;
            throw new Error(`restoring ${manifest.object} from ${engine.description} failed: ${(err as Error).message}`, { cause: err });
          });
          logger.info("restored from a snapshot; applying the streams from its sequences", {
            object: manifest.object,
            store: engine.description,
            created_at: manifest.createdAt,
            streams: describe(result.streams),
            tables: result.tables,
            rows: result.rows,
            waited_ms: Date.now() - startedAt,
          });
          return result;
        }
        waitingFor =
          manifest === null
            ? `a snapshot (none is stored in ${engine.description})`
            : `a snapshot newer than the stored one (it covers ${describe(manifest.streams)})`;
        waitingFor += ` that covers ${describe(needs)}`;
        waitingFor += await this.askCluster(needs);
      } catch (err) {
        if (signal.aborted || err instanceof SnapshotAccessError) throw err;
        if (err instanceof SnapshotInvalidError) {
          // A damaged or foreign snapshot: a node of this cluster can replace it with a good one.
          waitingFor = `a valid snapshot (${(err as Error).message})`;
          const needs = await this.positions().then(coverageNeeded, () => undefined);
          if (needs) waitingFor += await this.askCluster(needs);
        } else {
          waitingFor = `a snapshot store and JetStream that answer, and a restore that succeeds (${(err as Error).message})`;
        }
      }
      const now = Date.now();
      if (waitingFor !== lastReported || now - reportedAt > 60_000) {
        (lastReported === "" ? logger.info : logger.warn).call(logger, "waiting for a snapshot to restore", {
          waiting_for: waitingFor,
          waited_s: Math.round((now - startedAt) / 1000),
        });
        lastReported = waitingFor;
        reportedAt = now;
      }
      await sleep(waitMs, signal);
      waitMs = Math.min(waitMs * 2, MAX_WAIT_MS);
    }
  }

  private async askCluster(needs: Coverage): Promise<string> {
    const { nc, config } = this.deps;
    const reply = await askForSnapshot(nc, config.nats.subjectPrefix, { from: config.nodeId, needs });
    if (reply === undefined) {
      return `; asked the cluster, and no node with a complete state answered yet (${noCompleteNodeHint(config.dbPath, needs)})`;
    }
    if (reply.accepted) return `; node ${reply.node} is saving one`;
    return `; node ${reply.node} cannot save one now: ${reply.reason ?? "no reason given"}`;
  }

  private async restore(manifest: ManifestFacts, signal: AbortSignal): Promise<RestoreFacts> {
    const file = await this.deps.engine.download(manifest, signal);
    try {
      const result = this.deps.engine.restore(file);
      this.cached = undefined;
      this.deps.onRestored(result);
      return result;
    } finally {
      rmSync(file, { force: true });
    }
  }

  /** Listen for other nodes' requests (while complete). */
  startAnswering(): void {
    if (this.deps.config.snapshot.enabled) this.listener.start();
  }

  stopAnswering(): void {
    this.listener.stop();
  }

  private answer(request: SnapshotRequest): SnapshotReply {
    const node = this.deps.config.nodeId;
    if (!this.complete) return { node, accepted: false, reason: "this node is catching up itself" };
    this.deps.logger.info("a node asked for a snapshot", { from: request.from, needs: describe(request.needs) });
    void this.saveForRequest(request.needs);
    return { node, accepted: true };
  }

  /** Saves once this node has applied what the requester needs (it may be a moment behind the streams). */
  private async saveForRequest(needs: Coverage): Promise<void> {
    const deadline = Date.now() + CATCH_UP_FOR_REQUEST_MS;
    while (Object.entries(needs).some(([stream, seq]) => this.deps.appliedSequence(stream) < seq)) {
      if (Date.now() > deadline || !this.complete) return;
      await sleep(200);
    }
    await this.saveWithLease("a node asked for one", () => true).catch(() => undefined);
  }

  /**
   * Housekeeping, every few seconds: saves when the freshness rule (freshness.ts) says so. Also reports the age of
   * the stored snapshot. Never rejects.
   */
  async keepFresh(): Promise<void> {
    if (this.checking || !this.deps.config.snapshot.enabled || !this.complete) return;
    this.checking = true;
    try {
      await this.checkFreshness();
    } catch (err) {
      // Never thrown at the caller, which does not wait for the check: the next one tries again.
      this.deps.logger.debug("the snapshot freshness check failed", { reason: (err as Error).message });
    } finally {
      this.checking = false;
    }
  }

  private async checkFreshness(): Promise<void> {
    const { config, logger } = this.deps;
    let manifest: ManifestFacts | null;
    try {
      manifest = await this.manifestForCheck(false);
    } catch (err) {
      const reason = (err as Error).message;
      // Wrong credentials will not pass by themselves: say so once, loudly; anything else may.
      if (err instanceof SnapshotAccessError && reason !== this.reportedAccessError)
        logger.error("cannot read the snapshot store; no snapshot is saved", { store: this.deps.engine.description, reason });
      else logger.debug("could not read the snapshot manifest for the freshness check", { reason });
      if (err instanceof SnapshotAccessError) this.reportedAccessError = reason;
      return;
    }
    const fills = await this.positions().catch(() => undefined);
    if (!fills) return;
    const due = (m: ManifestFacts | null) =>
      snapshotDue({
        streams: fills.map((f) => ({ stream: f.stream, lastSeq: f.lastSeq, maxMessages: f.maxMessages })),
        snapshot: m?.streams ?? null,
        snapshotCreatedAt: m ? Date.parse(m.createdAt) : null,
        intervalMs: config.snapshot.interval,
        now: Date.now(),
      });
    if (due(manifest) === undefined) return;
    // Due by the cached manifest: read it again before anything else.
    void this.saveWithLease("keeping the snapshot fresh", async () => {
      const reason = due(await this.manifestForCheck(true));
      if (reason !== undefined) logger.info("saving a snapshot", { reason });
      return reason !== undefined;
    }).catch(() => undefined);
  }

  private async manifestForCheck(fresh: boolean): Promise<ManifestFacts | null> {
    const now = Date.now();
    if (fresh || !this.cached || now - this.cached.at > MANIFEST_CACHE_MS) {
      this.cached = { manifest: await this.latest(), at: now };
    }
    const manifest = this.cached.manifest;
    if (manifest) this.deps.reportSnapshot?.(manifest);
    return manifest;
  }

  /** Resolves once no save of this node is under way (before the database closes). */
  async settled(): Promise<void> {
    await this.saving;
  }

  /** Before an exit on sleep_timeout: a snapshot the next cold start can restore from. */
  async saveBeforeExit(): Promise<void> {
    if (!this.deps.config.snapshot.enabled || !this.complete) return;
    this.deps.logger.info("saving a snapshot before stopping (sleep_timeout)");
    await this.saveWithLease("stopping on sleep_timeout", () => true).catch(() => undefined);
  }

  /**
   * One save at a time on this node, and only while holding the cluster's lease. `stillWanted` runs once the lease is
   * held (another node may have saved meanwhile). Undefined when another node holds the lease or it was not wanted.
   */
  private saveWithLease(why: string, stillWanted: () => boolean | Promise<boolean>): Promise<ManifestFacts | undefined> {
    this.saving ??= (async () => {
      const { engine, lease, logger } = this.deps;
      let held: HeldLease | undefined;
      try {
        held = await lease.tryAcquire();
      } catch (err) {
        logger.warn("could not take the snapshot lease; not saving now", { why, reason: (err as Error).message });
        return undefined;
      }
      if (!held) {
        logger.debug("another node holds the snapshot lease; not saving", { why });
        return undefined;
      }
      try {
        if (!(await stillWanted())) return undefined;
        const manifest = await engine.save(AbortSignal.any([held.signal, this.deps.signal]));
        this.cached = { manifest, at: Date.now() };
        this.deps.reportSnapshot?.(manifest);
        return manifest;
      } catch (err) {
        logger.warn("saving a snapshot failed; the stored one stays the latest", { why, store: engine.description, reason: (err as Error).message });
        return undefined;
      } finally {
        await held.release();
      }
    })().finally(() => (this.saving = undefined));
    return this.saving;
  }

  /** Retries `work` (not on wrong credentials) until it succeeds, saying once what it waits for. */
  private async retrying<T>(what: string, work: () => Promise<T>, signal: AbortSignal): Promise<T> {
    let waitMs = FIRST_WAIT_MS;
    let logged = false;
    for (;;) {
      try {
        return await work();
      } catch (err) {
        if (signal.aborted || err instanceof SnapshotAccessError) throw err;
        if (!logged) this.deps.logger.warn(`waiting to ${what}`, { store: this.deps.engine.description, reason: (err as Error).message });
        logged = true;
      }
      await sleep(waitMs, signal);
      waitMs = Math.min(waitMs * 2, MAX_WAIT_MS);
    }
  }
}

/**
 * What an operator can do when every node missed messages: no snapshot can bring them back, so one node accepts the
 * loss (its applied sequences move past the dropped messages), becomes complete, and the others restore from it.
 */
function noCompleteNodeHint(dbPath: string, needs: Coverage): string {
  const updates = Object.entries(needs)
    .map(([stream, seq]) => `UPDATE __marmot__applied SET seq = max(seq, ${seq}) WHERE stream = '${stream}';`)
    .join(" ");
  return (
    "if every node missed messages, none can make one and those changes are lost: on the node with the most recent " +
    `data, stop marmot, run sqlite3 ${dbPath} "${updates}" (this node's figures; use that node's path), and start it again`
  );
}

function describe(streams: Readonly<Record<string, number>>): string {
  return Object.entries(streams)
    .map(([stream, seq]) => `${stream}@${seq}`)
    .join(", ");
}
