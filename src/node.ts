// Wires one marmot node together: capture on the database, the embedded or external NATS, shipping and applying.

import { setMaxListeners } from "node:events";
import { mkdirSync } from "node:fs";
import type { Server } from "node:http";
import { dirname, join } from "node:path";
import type Database from "better-sqlite3";
import { jetstream, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { Agreement, digestBucketName, type AgreementSummary } from "./cluster/agreement.js";
import type { CliOptions, Config } from "./config/types.js";
import { ServerError } from "./errors.js";
import type { Logger } from "./log.js";
import { EventLoopLag } from "./event-loop-lag.js";
import { Metrics } from "./metrics.js";
import { startMetricsServer } from "./metrics-server.js";
import { ChangeShipper, msgIdPrefix } from "./shipper.js";
import { sleep } from "./sleep.js";
import { Applier } from "./sqlite/applier.js";
import { failFastWhenBusy, withWriteLock } from "./sqlite/busy.js";
import { installCapture, schemaVersion, type CaptureResult } from "./sqlite/capture.js";
import { ChangeLogReader } from "./sqlite/change-log.js";
import { logAllRowsSql } from "./sqlite/trigger-sql.js";
import { openDatabase } from "./sqlite/open.js";
import { SchemaSync } from "./sqlite/schema-sync.js";
import type { TableInfo } from "./sqlite/table.js";
import { commitWatch, DatabaseWatcher } from "./sqlite/watcher.js";
import { catchUp } from "./stream/catch-up.js";
import { connectNats } from "./stream/connect.js";
import { batchOrigin } from "./wire/codec.js";
import { ShardConsumer } from "./stream/consumer.js";
import { EmbeddedServer, type EmbeddedServerOptions } from "./stream/embedded-server.js";
import { waitForJetStream } from "./stream/jetstream-ready.js";
import { DUPLICATE_WINDOW_MS } from "./stream/duplicate-window.js";
import { cleanUpLargeBatches, JetStreamLargeBatches, largeBatchBucket } from "./stream/large-objects.js";
import { readOwnMessages } from "./stream/own-messages.js";
import { JetStreamPublisher } from "./stream/publisher.js";
import { ensureStreams, schemaStream, serverVersionRisk, type ShardStream } from "./stream/streams.js";
import { Wakeup } from "./wakeup.js";

/** Where the embedded nats-server keeps its JetStream store: beside the database, one folder per node. */
export function embeddedStoreDir(config: Config): string {
  return join(dirname(config.dbPath), `marmot-nats-${config.nodeId}`);
}

/** How long catching up before publishing may go without progress before the node publishes anyway. */
const CATCH_UP_STALL_MS = 60_000;
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

export class MarmotNode {
  readonly metrics: Metrics;
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
  private schemaConsumer: ShardConsumer | undefined;
  private agreement: Agreement | undefined;
  private lastActivity = Date.now();
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
    this.db = openDatabase(config.dbPath, logger);
    failFastWhenBusy(this.db);
    this.reader = new ChangeLogReader(this.db);
    this.reader.holdOnSchemaChange();
    this.watcher = new DatabaseWatcher(
      {
        dbPath: config.dbPath,
        pollingInterval: config.pollingInterval,
        onChange: () => this.onDatabaseChange(),
        committedElsewhere: commitWatch(this.db),
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
      if (!this.abort.signal.aborted) this.logger.warn("could not apply the changes that waited for the schema; trying at the next schema change", { reason: (err as Error).message });
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

  /** Messages the streams dropped before this node applied them, since start: more than 0 means it diverged. */
  get missedMessages(): number {
    return this.consumers.reduce((sum, c) => sum + c.missedMessages, 0);
  }

  /** Whether this node holds the same rows as the others, as far as digests of quiet shards have shown. */
  agreementSummary(): AgreementSummary {
    return this.agreement?.summary() ?? { state: "unknown", mismatches: [] };
  }

  /** Digests of quiet shards, compared with the other nodes' (see cluster/agreement.ts). */
  private startAgreement(js: JetStreamClient, streams: readonly ShardStream[], signal: AbortSignal): Agreement {
    const byShard = new Map(this.consumers.map((c, i) => [streams[i]!.shard, c]));
    const agreement = new Agreement(
      {
        dbPath: this.config.dbPath,
        nodeId: this.config.nodeId,
        shards: this.config.replicationLog.shards,
        streams,
        tables: () => this.capturedTables,
        appliedSequence: (stream) => this.applier.appliedSequence(stream),
        caughtUp: (shard) => byShard.get(shard)?.lastKnownLag === 0,
        openBucket: () =>
          new Kvm(js).create(digestBucketName(this.config.nats.streamPrefix), { replicas: this.config.replicationLog.replicas, history: 1 }),
      },
      this.logger.child({ component: "agreement" }),
      this.metrics,
    );
    this.tasks.push(agreement.run(signal));
    return agreement;
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
              if (!this.abort.signal.aborted) this.logger.warn("could not update capture after a schema change; will try again", { reason: (err as Error).message });
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
    this.wakeup.notify();
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
    if (servers.length === 0) {
      const options = embeddedServerOptions(config, this.cli);
      mkdirSync(options.storeDir, { recursive: true });
      this.server = await EmbeddedServer.start(options, logger.child({ component: "nats-server" }));
      this.server.onUnexpectedExit((exit) => {
        this.fail(new ServerError(`the embedded nats-server (pid ${this.server?.pid}) exited unexpectedly (code ${exit.code}, signal ${exit.signal}); marmot stops`));
      });
      servers = [this.server.clientUrl];
      // If marmot dies on an uncaught error, its server must not outlive it.
      const server = this.server;
      process.once("exit", () => {
        if (!this.serverStopped) this.killEmbeddedServer();
      });
      void server.exited.then(() => (this.serverStopped = true));
    }
    if (config.prometheus.enable) {
      this.metricsServer = await startMetricsServer(config.prometheus.bind, this.metrics, logger);
    }
    this.watcher.start();
    if (!config.publish) this.tasks.push(this.discardLoop(signal));

    this.nc = await connectNats({ servers, nats: config.nats, name, logger: logger.child({ component: "nats" }), signal });
    const risk = serverVersionRisk(this.nc.info?.version, config.replicationLog.replicas);
    if (risk !== undefined) logger.warn(risk, { replicas: config.replicationLog.replicas });
    const jsm = await waitForJetStream(this.nc, logger, signal);
    const streams = await ensureStreams(jsm, config, logger, signal);
    const js = jetstream(this.nc);
    const largeBatches = await JetStreamLargeBatches.open(js, largeBatchBucket(config.nats.streamPrefix), config.replicationLog.replicas, logger, signal);

    const schema = schemaStream(config);
    if (config.replicate) {
      if (this.schema.startsAtStreamEnd) {
        const end = (await jsm.streams.info(schema.stream)).state.last_seq;
        await withWriteLock(() => this.schema.skipTo(end), "recording where schema changes start", logger, signal);
        if (end > 0) logger.info("first start on this database: its schema is taken as it is, schema changes apply from now on", { stream: schema.stream, after_seq: end });
      }
      this.schemaConsumer = new ShardConsumer(js, jsm, schema, this.schema, { durableName: name }, logger.child({ component: "consumer", stream: schema.stream }), this.metrics);
      this.tasks.push(this.schemaConsumer.run(signal));
      this.consumers = streams.map(
        (s) =>
          new ShardConsumer(js, jsm, s, this.applier, { durableName: name, largeBatches }, logger.child({ component: "consumer", shard: s.shard }), this.metrics),
      );
      if (config.publish) await this.recallOwnMessages(this.consumers, msgIdPrefix(config.nodeId, this.epoch), signal);
      for (const c of this.consumers) this.tasks.push(c.run(signal));
      this.agreement = this.startAgreement(js, streams, signal);
    }
    if (config.publish) {
      const nc = this.nc;
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
      const schemaPublisher = new JetStreamPublisher(js, jsm, [schema]);
      const schemaFirst = () => this.publishSchemaChanges(schemaPublisher, signal);
      this.tasks.push(this.shipLoop(shipper, leftovers, schemaFirst, signal));
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
          if (found > 0) this.logger.info("found changes of this node in the stream that it has not applied yet", { stream: c.stream, messages: found });
        } catch (err) {
          if (signal.aborted) return;
          this.logger.warn("could not read this node's own changes back from the stream; going on", { stream: c.stream, reason: (err as Error).message });
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

  private async shipLoop(shipper: ChangeShipper, leftovers: () => Promise<void>, schemaFirst: () => Promise<void>, signal: AbortSignal): Promise<void> {
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
    if (removed > 0) this.logger.info("changes left by the last run were in the streams already; not sending them again", { changes: removed, pending });
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
      const appliedNow = this.metrics.applied.get();
      if (appliedNow !== appliedBefore) this.lastActivity = Date.now();
      appliedBefore = appliedNow;
      if (this.config.sleepTimeout > 0 && Date.now() - this.lastActivity > this.config.sleepTimeout) {
        this.logger.info("no changes for sleep_timeout; stopping", { sleep_timeout_ms: this.config.sleepTimeout });
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
      this.abort.abort(new Error("marmot is stopping"));
      this.watcher.stop();
      this.loopLag.stop();
      await this.starting.catch(() => undefined);
      await Promise.allSettled(this.tasks);
      await this.captureUpdate;
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
