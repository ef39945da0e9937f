// Wires one marmot node together: capture on the database, the embedded or external NATS, shipping and applying.

import { setMaxListeners } from "node:events";
import { mkdirSync } from "node:fs";
import type { Server } from "node:http";
import { dirname, join } from "node:path";
import type Database from "better-sqlite3";
import { jetstream, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection, Status } from "@nats-io/transport-node";
import { NodeStatusTracker } from "./cluster/node-status.js";
import type { NodeStatus } from "./cluster/status-model.js";
import { Agreement, digestBucketName } from "./cluster/agreement.js";
import type { CliOptions, Config } from "./config/types.js";
import { ServerError, SnapshotAccessError } from "./errors.js";
import type { Logger } from "./log.js";
import { EventLoopLag } from "./event-loop-lag.js";
import { Metrics } from "./metrics.js";
import { startHttpServer } from "./http/server.js";
import { ChangeShipper, msgIdPrefix } from "./shipper.js";
import { orAbort, sleep } from "./sleep.js";
import { openNodeSnapshots } from "./snapshot/node-wiring.js";
import type { NodeSnapshots, RestoreFacts } from "./snapshot/node-snapshots.js";
import { Applier } from "./sqlite/applier.js";
import { failFastWhenBusy, withWriteLock } from "./sqlite/busy.js";
import { installCapture, schemaVersion, type CaptureResult } from "./sqlite/capture.js";
import { ChangeLogReader } from "./sqlite/change-log.js";
import { logAllRowsSql } from "./sqlite/trigger-sql.js";
import { countParked, parkedRequestPending, takeParkedRequest } from "./sqlite/parked.js";
import { openDatabase } from "./sqlite/open.js";
import { SchemaSync } from "./sqlite/schema-sync.js";
import type { TableInfo } from "./sqlite/table.js";
import { commitWatch, DatabaseWatcher, ownWrites } from "./sqlite/watcher.js";
import { catchUp } from "./stream/catch-up.js";
import { connectNats } from "./stream/connect.js";
import { batchOrigin } from "./wire/codec.js";
import { ShardConsumer } from "./stream/consumer.js";
import { EmbeddedServer, type EmbeddedServerOptions } from "./stream/embedded-server.js";
import { waitForJetStream } from "./stream/jetstream-ready.js";
import { DUPLICATE_WINDOW_MS } from "./stream/duplicate-window.js";
import { cleanUpLargeBatches, JetStreamLargeBatches, largeBatchBucket } from "./stream/large-objects.js";
import { warnAboutEarlierStreams } from "./stream/leftover-streams.js";
import { readOwnMessages } from "./stream/own-messages.js";
import { JetStreamPublisher } from "./stream/publisher.js";
import { ensureStreams, schemaStream, serverVersionRisk, type ShardStream } from "./stream/streams.js";
import { marmotVersion } from "./version.js";
import { Wakeup } from "./wakeup.js";

/** Where the embedded nats-server keeps its JetStream store: beside the database, one folder per node. */
export function embeddedStoreDir(config: Config): string {
  return join(dirname(config.dbPath), `marmot-nats-${config.nodeId}`);
}

/** How a node (or a one-shot command of the node, -save-snapshot) starts its embedded nats-server. */
export function embeddedServerOptions(config: Config, cli: CliOptions): EmbeddedServerOptions {
  return {
    serverName: `marmot-node-${config.nodeId}`,
    storeDir: embeddedStoreDir(config),
    bindAddress: config.nats.bindAddress,
    clusterAddr: cli.clusterAddr || undefined,
    clusterPeers: cli.clusterPeers,
    leafServers: cli.leafServers,
    serverConfig: config.nats.serverConfig || undefined,
  };
}

/** How long catching up before publishing may go without progress before the node publishes anyway. */
const CATCH_UP_STALL_MS = 60_000;

export class MarmotNode {
  readonly metrics: Metrics;
  private readonly statusTracker: NodeStatusTracker;
  private readonly abort = new AbortController();
  private readonly wakeup = new Wakeup();
  private readonly tasks: Promise<void>[] = [];
  private readonly db: Database.Database;
  private readonly reader: ChangeLogReader;
  /** set once capture is installed (it creates the tables the applier uses) */
  private applier!: Applier;
  /** schema changes to and from the other nodes; set with capture */
  private schema!: SchemaSync;
  private readonly watcher: DatabaseWatcher;
  private epoch = "";
  private knownSchemaVersion = -1;
  private server: EmbeddedServer | undefined;
  private nc: NatsConnection | undefined;
  private metricsServer: Server | undefined;
  private consumers: ShardConsumer[] = [];
  /** consumers and shipper: stopped and started again around a restore while running (see heal) */
  private replication: { abort: AbortController; tasks: Promise<void>[] } | undefined;
  private snapshots: NodeSnapshots | undefined;
  private healing: Promise<void> | undefined;
  /** applies the schema stream (see SchemaSync); runs with the shard consumers */
  private schemaConsumer: ShardConsumer | undefined;
  private lastActivity = Date.now();
  private readonly startedAt = Date.now();
  private readonly loopLag = new EventLoopLag();
  private serverStopped = false;
  private capturedTables: readonly TableInfo[] = [];
  /** a capture update after a schema change, waiting for the app's write lock */
  private captureUpdate: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  /** the start's networking part; a stop waits for it, so nothing it creates is left behind */
  private starting: Promise<void> = Promise.resolve();
  private failure: ((err: Error) => void) | undefined;
  /** Settles when the node stops: resolves after stop(), rejects when it cannot go on. */
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  private constructor(
    private readonly config: Config,
    private readonly cli: CliOptions,
    private readonly logger: Logger,
  ) {
    this.metrics = new Metrics(config.prometheus.namespace, config.prometheus.subsystem);
    this.done = new Promise<void>((resolve, reject) => {
      this.resolveDone = resolve;
      this.failure = reject;
    });
    this.done.catch(() => undefined);
    // One listener per consumer (the shards' and the schema stream's), the loops and the agreement: more than 10.
    setMaxListeners(64, this.abort.signal);
    this.db = openDatabase(config.dbPath, logger, { replicating: true });
    failFastWhenBusy(this.db);
    this.reader = new ChangeLogReader(this.db);
    this.reader.holdOnSchemaChange();
    this.statusTracker = new NodeStatusTracker(
      config,
      marmotVersion(),
      { pendingChanges: () => this.reader.pendingCount(), parkedChanges: () => countParked(this.db) },
      this.metrics,
      logger.child({ component: "status" }),
    );
    this.statusTracker.onReady(() =>
      logger.info("marmot is ready: capture is installed, the streams exist and this node has applied them to their end", {
        node_id: config.nodeId,
      }),
    );
    this.watcher = new DatabaseWatcher(
      {
        dbPath: config.dbPath,
        pollingInterval: config.pollingInterval,
        onChange: () => this.onDatabaseChange(),
        committedElsewhere: commitWatch(this.db),
        wroteHere: ownWrites(this.db),
      },
      logger,
    );
  }

  /** Capture first: it creates the internal tables the reader and the applier use. */
  private async installCaptureAtStart(signal: AbortSignal): Promise<void> {
    const { config, logger } = this;
    const install = this.db.transaction(() => {
      const result = installCapture(this.db, logger, config.tables);
      this.schema = this.newSchemaSync(result.epoch);
      this.schema.start(result.tables);
      return result;
    });
    const captured = await withWriteLock(() => install.immediate(), "installing capture", logger, signal);
    this.applier = new Applier(
      this.db,
      logger.child({ component: "applier" }),
      config.publish ? { origin: batchOrigin(config.nodeId, captured.epoch) } : {},
    );
    this.useCapture(captured);
  }

  private newSchemaSync(epoch: string): SchemaSync {
    const { config } = this;
    return new SchemaSync(this.db, this.logger.child({ component: "schema" }), {
      filter: config.tables,
      origin: batchOrigin(config.nodeId, epoch),
      stream: schemaStream(config).stream,
      publish: config.publish,
      capture: () => installCapture(this.db, this.logger, config.tables),
      captured: (result, previous) => {
        this.useCapture(result, previous);
        this.retryParkedSoon();
      },
      capturedTables: () => this.capturedTables,
      knownSchemaVersion: () => this.knownSchemaVersion,
    });
  }

  /** Changes that waited for a table or column: tried again after the schema stream changed the schema. */
  private retryParkedSoon(): void {
    if (!this.applier.hasParked()) return;
    withWriteLock(() => this.applier.retryParked(), "applying changes that waited for the schema", this.logger, this.abort.signal).catch((err) => {
      if (!this.abort.signal.aborted)
        this.logger.warn("could not apply the changes that waited for the schema; trying at the next schema change", {
          reason: (err as Error).message,
        });
    });
  }

  /**
   * Install capture, start NATS (or connect to it) and begin shipping and applying. `onCreated` gets the node before
   * the start waits for anything, so a caller can stop it meanwhile (a SIGTERM while NATS is not there yet); the
   * start then rejects with the stop's reason.
   */
  static async start(config: Config, cli: CliOptions, logger: Logger, onCreated?: (node: MarmotNode) => void): Promise<MarmotNode> {
    const node = new MarmotNode(config, cli, logger);
    onCreated?.(node);
    node.starting = (async () => {
      await node.installCaptureAtStart(node.abort.signal);
      await node.startNetworking();
    })();
    try {
      await node.starting;
      if (node.abort.signal.aborted) throw node.abort.signal.reason;
    } catch (err) {
      await node.stop();
      throw err;
    }
    return node;
  }

  /** This node's status, as its heartbeat and /status show it. */
  status(): NodeStatus {
    return this.statusTracker.selfStatus();
  }

  /** Digests of quiet shards, compared with the other nodes' (see cluster/agreement.ts). */
  private startAgreement(js: JetStreamClient, streams: readonly ShardStream[], signal: AbortSignal): void {
    const agreement = new Agreement(
      {
        dbPath: this.config.dbPath,
        nodeId: this.config.nodeId,
        shards: this.config.replicationLog.shards,
        streams,
        tables: () => this.capturedTables,
        appliedSequence: (stream) => this.applier.appliedSequence(stream),
        // Looked up each time: a restore while running replaces the consumers.
        caughtUp: (shard) => this.consumers.find((c) => c.stream === streams.find((st) => st.shard === shard)?.stream)?.lastKnownLag === 0,
        openBucket: () =>
          new Kvm(js).create(digestBucketName(this.config.nats.streamPrefix), { replicas: this.config.replicationLog.replicas, history: 1 }),
      },
      this.logger.child({ component: "agreement" }),
      this.metrics,
    );
    this.tasks.push(agreement.run(signal));
    // The status page shows, for this node, what its own comparisons say about each shard.
    this.statusTracker.setAgreementSource({ summary: () => ({ [this.config.nodeId]: agreement.byShard() }) });
  }

  /**
   * A reconnect can mean that the server this node was on is gone, and with it the consumers it held (they live on
   * one server, see ShardConsumer). The client's heartbeat tracking starts afresh after a reconnect, so without
   * this a lost consumer was noticed only as a stall, 15 s later: each is started again at once instead.
   */
  private restartConsumersOnReconnect(nc: NatsConnection, signal: AbortSignal): void {
    const events = nc.status() as AsyncIterable<Status> & { stop?: () => void };
    signal.addEventListener("abort", () => events.stop?.(), { once: true });
    void (async () => {
      for await (const event of events) {
        if (event.type !== "reconnect") continue;
        for (const consumer of [this.schemaConsumer, ...this.consumers]) consumer?.restart(`reconnected to NATS at ${event.server}`);
      }
    })().catch((err: unknown) => this.logger.debug(`stopped watching for reconnects: ${String(err)}`));
  }

  /** Whether stop() was called (by a signal, say). */
  get stopRequested(): boolean {
    return this.abort.signal.aborted;
  }

  private useCapture({ tables, epoch, relogged }: CaptureResult, previous?: readonly TableInfo[]): void {
    if (previous) this.captureRowsOfNewTables(tables, [...previous, ...tables.filter((t) => relogged.includes(t.name))]);
    this.epoch = epoch;
    this.capturedTables = tables;
    this.reader.setTables(tables);
    this.applier.setTables(tables);
    this.knownSchemaVersion = schemaVersion(this.db);
    this.logger.info("capturing changes", { tables: tables.map((t) => t.name).join(",") });
  }

  /** Rows the app wrote into a table created while marmot runs, before its triggers existed, travel as upserts. */
  private captureRowsOfNewTables(tables: readonly TableInfo[], previous: readonly TableInfo[]): void {
    const known = new Set(previous.map((t) => t.name));
    for (const table of tables) {
      if (known.has(table.name)) continue;
      const logged = this.db.prepare(logAllRowsSql(table)).run().changes;
      if (logged > 0) this.logger.info("captured the rows of a new table written before its triggers existed", { table: table.name, rows: logged });
    }
  }

  /** Called by the watcher: a new table or column is captured from now on, then the shipper looks for changes. */
  private onDatabaseChange(): void {
    if (this.captureUpdate === undefined) {
      try {
        if (schemaVersion(this.db) !== this.knownSchemaVersion) {
          this.logger.info("schema changed; updating capture");
          this.captureUpdate = withWriteLock(() => this.updateCapture(), "updating capture after a schema change", this.logger, this.abort.signal)
            .catch((err) => {
              if (!this.abort.signal.aborted)
                this.logger.warn("could not update capture after a schema change; will try again", { reason: (err as Error).message });
            })
            .finally(() => {
              this.captureUpdate = undefined;
              this.wakeup.notify();
            });
        }
      } catch (err) {
        this.logger.warn("could not read the schema version; will try again", { reason: (err as Error).message });
      }
    }
    this.takeParkedRequest();
    this.wakeup.notify();
  }

  /** marmot -parked left a request in the database (see PARKED_REQUEST_KEY): act on it here, where the applier runs. */
  private takeParkedRequest(): void {
    try {
      if (!parkedRequestPending(this.db)) return;
      const request = takeParkedRequest(this.db);
      if (request === "retry") {
        const before = countParked(this.db);
        const applied = this.applier.retryParked();
        this.logger.info("retried the parked changes, as marmot -parked -retry asked", { applied, still_parked: before - applied });
      } else if (request === "reload") {
        this.applier.reloadParked();
        this.logger.info("the parked changes were changed by marmot -parked; reloaded them", { parked: countParked(this.db) });
      }
    } catch (err) {
      this.logger.warn("could not act on the request of marmot -parked; it can be made again", { reason: (err as Error).message });
    }
  }

  /** One try: installCapture is one transaction, and retryParked another (it may find the lock taken again). */
  private updateCapture(): void {
    if (schemaVersion(this.db) !== this.knownSchemaVersion) {
      const previous = this.capturedTables;
      const update = this.db.transaction(() => {
        const result = installCapture(this.db, this.logger, this.config.tables);
        this.schema.notice(result, previous);
        return result;
      });
      this.useCapture(update.immediate(), previous);
    }
    if (this.applier.hasParked()) this.applier.retryParked();
  }

  private async startNetworking(): Promise<void> {
    const { config, logger } = this;
    const signal = this.abort.signal;
    const name = `marmot-node-${config.nodeId}`;
    let servers = config.nats.urls;
    const status = this.statusTracker;
    if (config.prometheus.enable) {
      this.metricsServer = await startHttpServer(config.prometheus.bind, this.metrics, status, logger);
    }
    if (servers.length === 0) {
      status.startingStep("starting the embedded nats-server");
      const options = embeddedServerOptions(config, this.cli);
      mkdirSync(options.storeDir, { recursive: true });
      this.server = await EmbeddedServer.start(options, logger.child({ component: "nats-server" }));
      this.server.onUnexpectedExit((exit) => {
        this.fail(
          new ServerError(
            `the embedded nats-server (pid ${this.server?.pid}) exited unexpectedly (code ${exit.code}, signal ${exit.signal}); marmot stops`,
          ),
        );
      });
      servers = [this.server.clientUrl];
      // If marmot dies on an uncaught error, its server must not outlive it.
      const server = this.server;
      process.once("exit", () => {
        if (!this.serverStopped) this.killEmbeddedServer();
      });
      void server.exited.then(() => (this.serverStopped = true));
    }
    this.watcher.start();
    if (!config.publish) this.tasks.push(this.discardLoop(signal));

    status.startingStep(`connecting to NATS at ${servers.join(", ")}`);
    this.nc = await connectNats({ servers, nats: config.nats, name, logger: logger.child({ component: "nats" }), signal });
    const risk = serverVersionRisk(this.nc.info?.version, config.replicationLog.replicas);
    if (risk !== undefined) logger.warn(risk, { replicas: config.replicationLog.replicas });
    status.startingStep("waiting for JetStream");
    const jsm = await waitForJetStream(this.nc, logger, signal);
    status.startingStep("creating or checking the streams");
    const streams = await ensureStreams(jsm, config, logger, signal);
    const js = jetstream(this.nc);
    const largeBatches = await JetStreamLargeBatches.open(
      js,
      largeBatchBucket(config.nats.streamPrefix),
      config.replicationLog.replicas,
      logger,
      signal,
    );
    if (config.replicate && config.snapshot.enabled) {
      this.snapshots = await openNodeSnapshots({
        config,
        db: this.db,
        nc: this.nc,
        jsm,
        streams,
        appliedSequence: (stream) => this.applier.appliedSequence(stream),
        onRestored: (result) => this.onRestored(result),
        onSnapshotSeen: (takenAt, sizeBytes) => status.setLastSnapshot({ takenAt, sizeBytes }),
        metrics: this.metrics,
        signal,
        logger: logger.child({ component: "snapshot" }),
      });
      await this.whileRestoring(() => this.snapshots!.restoreIfNeeded(signal));
    }
    if (config.replicate) {
      const storeDir = this.server ? embeddedStoreDir(config) : undefined;
      await orAbort(
        warnAboutEarlierStreams(jsm, streams, (s) => this.applier.appliedSequence(s), this.startedAt, storeDir, logger),
        signal,
      ).catch((err) => logger.debug("could not look for an earlier cluster's changes in the streams", { reason: (err as Error).message }));
    }
    await this.startReplication(js, jsm, streams, largeBatches, signal);
    if (config.replicate) this.startAgreement(js, streams, signal);
    if (config.publish) {
      this.tasks.push(cleanUpLargeBatches(largeBatches, `${config.nodeId}-`, jsm, logger.child({ component: "large-changes" }), signal));
    }
    this.tasks.push(this.housekeeping(signal));
    logger.info("marmot is running", {
      node_id: config.nodeId,
      db: config.dbPath,
      nats: servers.join(","),
      shards: config.replicationLog.shards,
      publish: config.publish,
      replicate: config.replicate,
    });
    this.wakeup.notify();
    // Ready once the consumers reach where the streams end at the status' first look (at once when they are there).
    status.attach(this.nc, jsm, streams, this.consumers);
    this.tasks.push(status.run(signal));
  }

  /** The status shows the node as restoring (not ready) while `restore` runs. */
  private async whileRestoring<T>(restore: () => Promise<T>): Promise<T> {
    this.statusTracker.setRestoring(true);
    try {
      return await restore();
    } finally {
      this.statusTracker.setRestoring(false);
    }
  }

  /**
   * Consumers and shipper, under a signal of their own: a gap found while running stops them for a restore (heal),
   * and they start again after it, from the restored sequences.
   */
  private async startReplication(
    js: JetStreamClient,
    jsm: JetStreamManager,
    streams: readonly ShardStream[],
    largeBatches: JetStreamLargeBatches,
    nodeSignal: AbortSignal,
  ): Promise<void> {
    const { config, logger } = this;
    const abort = new AbortController();
    const signal = AbortSignal.any([nodeSignal, abort.signal]);
    const tasks: Promise<void>[] = [];
    this.replication = { abort, tasks };
    const name = `marmot-node-${config.nodeId}`;
    if (config.replicate) {
      // The schema stream first: a row change that needs a newer schema waits (parked) until it is applied.
      const schema = schemaStream(config);
      if (this.schema.startsAtStreamEnd) {
        const end = (await jsm.streams.info(schema.stream)).state.last_seq;
        await withWriteLock(() => this.schema.skipTo(end), "recording where schema changes start", logger, signal);
        if (end > 0)
          logger.info("first start on this database: its schema is taken as it is, schema changes apply from now on", {
            stream: schema.stream,
            after_seq: end,
          });
      }
      this.schemaConsumer = new ShardConsumer(
        js,
        jsm,
        schema,
        this.schema,
        { durableName: name },
        logger.child({ component: "consumer", stream: schema.stream }),
        this.metrics,
      );
      tasks.push(this.schemaConsumer.run(signal));
      const onGap = this.snapshots ? () => void this.heal(js, jsm, streams, largeBatches, nodeSignal) : undefined;
      this.consumers = streams.map(
        (s) =>
          new ShardConsumer(
            js,
            jsm,
            s,
            this.applier,
            { durableName: name, largeBatches, onGap },
            logger.child({ component: "consumer", shard: s.shard }),
            this.metrics,
          ),
      );
      if (config.publish) await this.recallOwnMessages(this.consumers, msgIdPrefix(config.nodeId, this.epoch), signal);
      for (const c of this.consumers) tasks.push(c.run(signal));
      this.restartConsumersOnReconnect(this.nc!, signal);
    }
    if (config.publish) {
      const nc = this.nc!;
      const streamOf = new Map(streams.map((s) => [s.shard, s.stream]));
      const publisher = new JetStreamPublisher(js, jsm, streams);
      const shipper = new ChangeShipper(
        this.reader,
        publisher,
        {
          origin: config.nodeId,
          epoch: this.epoch,
          shards: config.replicationLog.shards,
          batchMaxChanges: config.scanMaxChanges,
          maxPayload: () => nc.info?.max_payload ?? 1024 * 1024,
          compress: config.replicationLog.compress,
          onStored: config.replicate ? (shard, seq, rowKeys) => this.applier.noteStored(streamOf.get(shard)!, seq, rowKeys) : undefined,
          streamOf: (shard) => streamOf.get(shard)!,
          largeBatches,
          duplicates: { windowMs: DUPLICATE_WINDOW_MS, findStored: (...args) => publisher.findStored(...args) },
        },
        logger.child({ component: "shipper" }),
        this.metrics,
      );
      const leftovers = config.replicate
        ? () => this.catchUpBeforeShipping(signal)
        : () => this.forgetStoredLeftovers(js, jsm, streams, largeBatches, msgIdPrefix(config.nodeId, this.epoch), signal);
      const schemaPublisher = new JetStreamPublisher(js, jsm, [schemaStream(config)]);
      const schemaFirst = () => this.publishSchemaChanges(schemaPublisher, signal);
      tasks.push(this.shipLoop(shipper, leftovers, schemaFirst, signal));
    }
    if (this.snapshots && !signal.aborted) {
      this.snapshots.complete = true;
      this.snapshots.startAnswering();
    }
  }

  private async stopReplication(): Promise<void> {
    this.snapshots?.stopAnswering();
    if (this.snapshots) this.snapshots.complete = false;
    const running = this.replication;
    if (!running) return;
    running.abort.abort(new Error("replication stops for a restore"));
    await Promise.allSettled(running.tasks);
  }

  /**
   * A consumer found that its stream dropped messages this node never applied: stop applying and shipping, restore
   * a snapshot that covers them (asking the cluster for one if needed), and start again from its sequences. The
   * app's changes meanwhile stay in the change log and go out afterwards.
   */
  private heal(
    js: JetStreamClient,
    jsm: JetStreamManager,
    streams: readonly ShardStream[],
    largeBatches: JetStreamLargeBatches,
    signal: AbortSignal,
  ): Promise<void> {
    this.healing ??= (async () => {
      try {
        await this.stopReplication();
        this.logger.info("replication stopped to restore from a snapshot");
        await this.whileRestoring(() => this.snapshots!.heal(signal));
        await this.startReplication(js, jsm, streams, largeBatches, signal);
        this.wakeup.notify();
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof SnapshotAccessError) return this.fail(err);
        this.fail(new Error(`restoring from a snapshot after a gap failed: ${(err as Error).message}`, { cause: err }));
      }
    })().finally(() => (this.healing = undefined));
    return this.healing;
  }

  /** A snapshot was restored underneath: the applier's sequences and capture follow the restored database. */
  private onRestored(result: RestoreFacts): void {
    this.applier.databaseReplaced();
    this.schema.reloadApplied();
    // Without `previous`: the restored tables' rows came from the cluster, they are not this node's changes.
    this.useCapture(installCapture(this.db, this.logger, this.config.tables));
    this.reader.rewind();
    this.logger.info("this node's applied sequences now come from the snapshot", { streams: JSON.stringify(result.streams) });
  }

  /**
   * Before applying: this node's messages that JetStream stored while the last run was ending, not applied here
   * yet. The applier keeps their rows from going back to an older state meanwhile (see ShardConsumer). Best effort:
   * when it fails, the node runs as before, with the window that record closes open until it has caught up.
   */
  private async recallOwnMessages(consumers: readonly ShardConsumer[], prefix: string, signal: AbortSignal): Promise<void> {
    await Promise.all(
      consumers.map(async (c) => {
        try {
          const found = await c.recallOwnMessages(prefix, this.reader.lastStoredSeq(c.stream), signal);
          if (found > 0)
            this.logger.info("found changes of this node in the stream that it has not applied yet", { stream: c.stream, messages: found });
        } catch (err) {
          if (signal.aborted) return;
          this.logger.warn("could not read this node's own changes back from the stream; going on", {
            stream: c.stream,
            reason: (err as Error).message,
          });
        }
      }),
    );
  }

  /**
   * Before each shipping round: a schema change not noticed yet is noticed (capture follows it), and every schema
   * message waiting is stored in the schema stream. Rows captured after a schema change so never leave before it.
   */
  private async publishSchemaChanges(publisher: JetStreamPublisher, signal: AbortSignal): Promise<void> {
    if (schemaVersion(this.db) !== this.knownSchemaVersion) {
      this.onDatabaseChange();
      await this.captureUpdate;
      if (schemaVersion(this.db) !== this.knownSchemaVersion) throw new Error("capture has not followed the latest schema change yet");
    }
    if (!this.schema.hasUnpublished()) return;
    const prefix = msgIdPrefix(this.config.nodeId, this.epoch);
    await this.schema.publishPending(publisher, prefix, (work) => withWriteLock(work, "recording a published schema change", this.logger, signal));
  }

  private async shipLoop(
    shipper: ChangeShipper,
    leftovers: () => Promise<void>,
    schemaFirst: () => Promise<void>,
    signal: AbortSignal,
  ): Promise<void> {
    try {
      await leftovers();
    } catch (err) {
      if (signal.aborted) return;
      this.logger.error("could not check the changes left by the last run against the streams; publishing them anyway", {
        reason: (err as Error).message,
      });
    }
    while (!signal.aborted) {
      let shipped = 0;
      try {
        await schemaFirst();
        shipped = await shipper.shipRound(signal);
      } catch (err) {
        if (signal.aborted) break;
        this.logger.error("shipping changes failed; they stay in the change log and are tried again", { reason: (err as Error).message });
        await sleep(1000, signal).catch(() => undefined);
        this.reader.rewind();
      }
      if (shipped > 0) this.lastActivity = Date.now();
      else await this.wakeup.wait(signal);
    }
  }

  /**
   * Changes the last run left in the change log may be in the streams already: marmot stopped between JetStream's
   * ack and their removal from the log. Shipped again they would be packed into other messages, which JetStream's
   * duplicate check cannot recognise, and an older state of a row could land after another node's newer write.
   * So before its first round the node applies the streams up to where they end now: its own changes found there
   * leave the change log (see the applier), and only changes that never reached JetStream go out.
   */
  private async catchUpBeforeShipping(signal: AbortSignal): Promise<void> {
    const pending = this.reader.pendingCount();
    if (pending === 0 || this.consumers.length === 0) return;
    const started = Date.now();
    this.logger.info("applying the streams to their end before publishing the changes left by the last run", { pending });
    // Waiting as long as applying progresses; a consumer that cannot must not stop all publishing for good. Going
    // on then risks only what the wait avoids: a change the stream already holds goes out again, later in order.
    if (await catchUp(this.consumers, this.logger, signal, { stallMs: CATCH_UP_STALL_MS })) {
      this.logger.info("caught up; publishing", { after_ms: Date.now() - started, pending: this.reader.pendingCount() });
    } else {
      this.logger.error("publishing without having applied the streams to their end: changes the last run sent may go out twice", {
        pending: this.reader.pendingCount(),
        after_ms: Date.now() - started,
      });
    }
  }

  /**
   * The same question for a node that does not apply (replicate = false): it reads each stream from the last
   * sequence it recorded storing at, finds its own messages there by their id, and takes their changes out of the
   * change log. Best effort: when a stream cannot be read, its left-over changes go out again (as they did before).
   */
  private async forgetStoredLeftovers(
    js: JetStreamClient,
    jsm: JetStreamManager,
    streams: readonly ShardStream[],
    largeBatches: JetStreamLargeBatches,
    prefix: string,
    signal: AbortSignal,
  ): Promise<void> {
    const pending = this.reader.pendingCount();
    if (pending === 0) return;
    let removed = 0;
    for (const { stream } of streams) {
      try {
        const upTo = (await jsm.streams.info(stream)).state.last_seq;
        const range = { stream, after: this.reader.lastStoredSeq(stream), upTo, msgIdPrefix: prefix };
        // In stream order, one at a time: a large change's reference is read back to its batch first.
        let forgetting = Promise.resolve();
        let failure: unknown;
        const forget = async (data: Uint8Array) => {
          try {
            removed += this.applier.forgetOwnMessage(await largeBatches.batchBytes(data));
          } catch (err) {
            failure ??= err;
          }
        };
        await readOwnMessages(js, jsm, range, (_seq, data) => void (forgetting = forgetting.then(() => forget(data))), signal);
        await forgetting;
        if (failure !== undefined) throw failure;
      } catch (err) {
        if (signal.aborted) return;
        this.logger.warn("could not read the stream for changes the last run had sent; they may go out again", {
          stream,
          reason: (err as Error).message,
        });
      }
    }
    if (removed > 0)
      this.logger.info("changes left by the last run were in the streams already; not sending them again", { changes: removed, pending });
    this.reader.rewind();
  }

  private async discardLoop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      let removed = 0;
      try {
        removed = await withWriteLock(() => this.reader.discardAll(), "dropping captured changes (publish = false)", this.logger, signal);
      } catch (err) {
        if (signal.aborted) break;
        this.logger.warn("could not drop captured changes (publish = false); will try again", { reason: (err as Error).message });
      }
      if (removed > 0) this.logger.debug("publish = false: dropped captured changes", { changes: removed });
      await sleep(Math.max(this.config.cleanupInterval, 100), signal).catch(() => undefined);
    }
  }

  /** Metrics that need a look at the database or the streams, and the idle exit of sleep_timeout. */
  private async housekeeping(signal: AbortSignal): Promise<void> {
    let appliedBefore = this.metrics.applied.get();
    this.loopLag.start();
    while (!signal.aborted) {
      await sleep(2000, signal).catch(() => undefined);
      if (signal.aborted) break;
      const lag = this.loopLag.take();
      this.metrics.eventLoopLag.set(lag.p50Ms / 1000, { quantile: "0.5" });
      this.metrics.eventLoopLag.set(lag.p99Ms / 1000, { quantile: "0.99" });
      this.metrics.eventLoopLag.set(lag.maxMs / 1000, { quantile: "1" });
      try {
        this.metrics.pendingPublish.set(this.reader.pendingCount());
        this.metrics.storedUnapplied.set(this.applier.storedRows);
        for (const c of this.consumers) await c.lag();
        await this.settleParked();
      } catch (err) {
        this.logger.debug("metrics refresh failed", { reason: (err as Error).message });
      }
      // Not awaited: a slow store must not hold up the lag readings and the stall check above.
      void this.snapshots?.keepFresh();
      const appliedNow = this.metrics.applied.get();
      if (appliedNow !== appliedBefore) this.lastActivity = Date.now();
      appliedBefore = appliedNow;
      if (this.config.sleepTimeout > 0 && Date.now() - this.lastActivity > this.config.sleepTimeout) {
        this.logger.info("no changes for sleep_timeout; stopping", { sleep_timeout_ms: this.config.sleepTimeout });
        // The serverless case: the next cold start restores from this snapshot instead of replaying the streams.
        await this.snapshots?.saveBeforeExit();
        void this.stop();
      }
    }
  }

  /**
   * Changes parked for a table or column that never came: once this node has applied the schema stream to where it
   * ended after they were parked, every schema change they could wait for is here (see Applier.retryParked).
   */
  private async settleParked(): Promise<void> {
    const consumer = this.schemaConsumer;
    if (consumer === undefined) return;
    const asOf = Date.now();
    // Also the schema stream's lag metric (shard "0") and its consumer's stall watch.
    const lag = await consumer.lag();
    if (lag > 0 || !this.applier.hasParked()) return;
    await withWriteLock(() => this.applier.retryParked(asOf), "settling changes that waited for the schema", this.logger, this.abort.signal);
  }

  /** Last resort before a forced exit: never leave the embedded server running without its marmot. */
  killEmbeddedServer(): void {
    if (this.server) {
      try {
        process.kill(this.server.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  }

  private fail(err: Error): void {
    this.logger.error(err.message);
    const reject = this.failure;
    this.failure = undefined;
    void this.stop().finally(() => reject?.(err));
  }

  /** Stop cleanly: in-flight publishes and applies finish, then NATS, the embedded server and the database close. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.logger.info("stopping");
      this.statusTracker.markStopping();
      this.abort.abort(new Error("marmot is stopping"));
      this.watcher.stop();
      this.loopLag.stop();
      await this.starting.catch(() => undefined);
      this.snapshots?.stopAnswering();
      await this.healing;
      await Promise.allSettled([...this.tasks, ...(this.replication?.tasks ?? []), this.snapshots?.settled()]);
      await this.captureUpdate;
      await this.statusTracker.stop();
      if (this.nc) await this.nc.drain().catch(() => undefined);
      this.metricsServer?.close();
      if (this.server) await this.server.stop();
      if (this.db.open) this.db.close();
      this.logger.info("stopped");
      if (this.failure) this.resolveDone();
    })();
    return this.stopping;
  }
}
