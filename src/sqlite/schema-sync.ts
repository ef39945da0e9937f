// Schema changes between nodes: notices the app's changes of the user schema, keeps them as messages until the
// schema stream has stored them, and applies the schema stream, every node's messages in the stream's order.

import type Database from "better-sqlite3";
import { DecodeError } from "../errors.js";
import type { Logger } from "../log.js";
import type { BatchPublisher } from "../stream/publisher.js";
import type { ApplyResult, StreamMessage } from "./applier.js";
import type { CaptureResult } from "./capture.js";
import { decodeSchemaMessage, encodeSchemaMessage, type SchemaChange, type SchemaMessage } from "../wire/schema-message.js";
import { APPLIED_TABLE, APPLYING_TABLE, META_TABLE, PARKED_TABLE, SCHEMA_OUTBOX_TABLE } from "./names.js";
import { quoteIdent } from "./quote.js";
import { foldCase, schemaVersion, type TableFilter } from "./schema.js";
import { applySchemaChanges, isColumnAppend, renamedColumns } from "./schema-apply.js";
import {
  diffSchemaState,
  ensureSchemaTables,
  objectKey,
  readSchemaState,
  recordSchemaState,
  storedSchemaState,
  tableTravels,
} from "./schema-state.js";
import type { TableInfo } from "./table.js";
import { logAllRowsSql } from "./trigger-sql.js";

/** META_TABLE key of the last schema message id handed out: ids name messages, so they are never reused. */
const LAST_MESSAGE_ID_KEY = "schema_message_id";

export interface SchemaSyncOptions {
  /** `[tables]`: changes of objects of other tables stay on this node */
  filter: TableFilter;
  /** batchOrigin() of this node: its own messages are recognised by it */
  origin: string;
  /** the schema stream's name, under which its applied sequence is recorded */
  stream: string;
  /** false with publish = false: this node's schema changes stay here */
  publish: boolean;
  /**
   * Capture made to match the schema (installCapture), called inside the transaction of an apply; the result goes
   * to `captured` after the commit, with the tables captured before.
   */
  capture: () => CaptureResult;
  captured: (result: CaptureResult, previous: readonly TableInfo[]) => void;
  /** the tables captured now */
  capturedTables: () => readonly TableInfo[];
  /** PRAGMA schema_version as capture last saw it */
  knownSchemaVersion: () => number;
}

interface OutboxRow {
  id: bigint;
  keys: string;
  payload: Buffer;
  published_seq: bigint | null;
}

export class SchemaSync {
  private applied = 0;
  /** see startsAtStreamEnd */
  private baselineHasTables = false;

  constructor(
    private readonly db: Database.Database,
    private readonly logger: Logger,
    private readonly options: SchemaSyncOptions,
  ) {}

  /**
   * Inside the transaction that installs capture at start: creates the schema tables (the schema as it is then is
   * the starting point of a database marmot never managed), then notices what changed while marmot was away. The
   * rows of a table the app created meanwhile travel too: it is new to every node.
   */
  start(tables: readonly TableInfo[]): void {
    if (ensureSchemaTables(this.db)) {
      const current = readSchemaState(this.db, this.options.filter);
      recordSchemaState(this.db, current);
      this.baselineHasTables = current.some((o) => o.type === "table" && o.travels);
    }
    const row = this.db.prepare(`SELECT seq FROM ${quoteIdent(APPLIED_TABLE)} WHERE stream = ?`).get(this.options.stream) as
      | { seq: bigint | number }
      | undefined;
    this.applied = row === undefined ? 0 : Number(row.seq);
    const stored = storedSchemaState(this.db);
    this.notice();
    if (!this.options.publish) return;
    for (const table of tables) {
      if (stored.has(objectKey("table", table.name))) continue;
      const rows = this.db.prepare(logAllRowsSql(table)).run().changes;
      if (rows > 0) this.logger.info("the app created a table while marmot was stopped; its rows travel with it", { table: table.name, rows });
    }
  }

  /**
   * Inside the caller's transaction, after capture was made to match the schema (`capture`, and `previous`: the
   * tables captured before): when the user schema differs from the recorded state, the difference becomes a message
   * in the outbox. Another node's copy of the rows then is the origin's after a column added at the end, columns
   * dropped, or columns renamed (see schema-apply.ts), and capture logs every row of a table that was made again.
   * A table changed in other ways at once (a column dropped and another renamed before marmot looked) has all its
   * rows logged here, so they overwrite every node's copy. Returns how many objects changed.
   */
  notice(capture?: CaptureResult, previous: readonly TableInfo[] = []): number {
    const { db } = this;
    const stored = storedSchemaState(db);
    const current = readSchemaState(db, this.options.filter);
    const changes = diffSchemaState(stored, current);
    if (changes.length === 0) return 0;
    if (this.options.publish) {
      const id = this.nextMessageId();
      const message: SchemaMessage = { origin: this.options.origin, id, changes };
      const keys = JSON.stringify(changes.map((c) => objectKey(c.type, c.name)));
      db.prepare(`INSERT INTO ${quoteIdent(SCHEMA_OUTBOX_TABLE)} (id, keys, payload) VALUES (?, ?, ?)`).run(
        BigInt(id),
        keys,
        encodeSchemaMessage(message),
      );
      if (capture !== undefined) this.logRowsOfReshapedTables(changes, stored, capture, previous);
    }
    recordSchemaState(db, current);
    this.logger.info(
      this.options.publish ? "schema changed; sending the change to the other nodes" : "schema changed (publish = false: it stays on this node)",
      {
        objects: changes.map(describe).join(", "),
      },
    );
    return changes.length;
  }

  private logRowsOfReshapedTables(
    changes: readonly SchemaChange[],
    stored: Map<string, SchemaChange>,
    capture: CaptureResult,
    previous: readonly TableInfo[],
  ): void {
    const before = new Map(previous.map((t) => [foldCase(t.name), t]));
    for (const table of capture.tables) {
      const change = changes.find((c) => c.type === "table" && c.sql !== null && foldCase(c.name) === foldCase(table.name));
      const old = before.get(foldCase(table.name));
      const oldSql = stored.get(objectKey("table", table.name))?.sql ?? null;
      if (change === undefined || old === undefined || oldSql === null || capture.relogged.includes(table.name)) continue;
      const oldColumns = old.columns.map((c) => c.name);
      const newColumns = table.columns.map((c) => c.name);
      const had = new Set(oldColumns.map(foldCase));
      const onlyDropped = newColumns.every((c) => had.has(foldCase(c)));
      if (onlyDropped || isColumnAppend(oldSql, change.sql!) || renamedColumns(oldSql, change.sql!, oldColumns, newColumns) !== undefined) continue;
      const rows = this.db.prepare(logAllRowsSql(table)).run().changes;
      if (rows > 0)
        this.logger.info("the table changed in several ways at once: its rows are sent again so that every node holds them as here", {
          table: table.name,
          rows,
        });
    }
  }

  private nextMessageId(): number {
    const row = this.db.prepare(`SELECT value FROM ${quoteIdent(META_TABLE)} WHERE key = ?`).get(LAST_MESSAGE_ID_KEY) as
      | { value: unknown }
      | undefined;
    const id = (row === undefined ? 0 : Number(row.value)) + 1;
    this.db
      .prepare(`INSERT INTO ${quoteIdent(META_TABLE)} (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`)
      .run(LAST_MESSAGE_ID_KEY, String(id));
    return id;
  }

  /** Whether schema messages of this node wait to be published. */
  hasUnpublished(): boolean {
    return this.db.prepare(`SELECT 1 FROM ${quoteIdent(SCHEMA_OUTBOX_TABLE)} WHERE published_seq IS NULL LIMIT 1`).get() !== undefined;
  }

  /**
   * Publish the outbox's messages in order, each recorded as stored before the next goes. The shipper calls this
   * before each round: no row captured after a schema change leaves before the change. `record` runs database work
   * under the write lock (withWriteLock).
   */
  async publishPending(publisher: BatchPublisher, msgIdPrefix: string, record: (work: () => void) => Promise<void>): Promise<number> {
    const rows = this.db
      .prepare(`SELECT id, keys, payload, published_seq FROM ${quoteIdent(SCHEMA_OUTBOX_TABLE)} WHERE published_seq IS NULL ORDER BY id`)
      .safeIntegers(true)
      .all() as OutboxRow[];
    for (const row of rows) {
      const seq = await publisher.publish(0, row.payload, `${msgIdPrefix}schema-${row.id}`);
      await record(() => {
        this.db.prepare(`UPDATE ${quoteIdent(SCHEMA_OUTBOX_TABLE)} SET published_seq = ? WHERE id = ?`).run(BigInt(seq), row.id);
        // Applied back already (the consumer can be faster than this record): nothing waits for it any more.
        this.db.prepare(`DELETE FROM ${quoteIdent(SCHEMA_OUTBOX_TABLE)} WHERE published_seq <= ?`).run(BigInt(this.applied));
      });
      this.logger.debug("published a schema change", { id: Number(row.id), seq });
    }
    return rows.length;
  }

  /**
   * Whether this node takes its schema as it is, starting at the schema stream's end: a database with tables that
   * marmot manages for the first time (or again after -cleanup). Replaying older schema changes onto it would take
   * it back through definitions it has left, and a rebuild to an older definition drops the columns added since
   * with their values. An empty database replays the stream from its start and so gets the cluster's tables.
   */
  get startsAtStreamEnd(): boolean {
    return this.baselineHasTables && this.applied === 0;
  }

  /** Record the schema stream as applied up to `seq` (see startsAtStreamEnd), under the caller's write lock. */
  skipTo(seq: number): void {
    this.baselineHasTables = false;
    if (seq === 0) return;
    this.db
      .prepare(`INSERT INTO ${quoteIdent(APPLIED_TABLE)} (stream, seq) VALUES (?, ?) ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq`)
      .run(this.options.stream, BigInt(seq));
    this.applied = seq;
  }

  appliedSequence(_stream: string): number {
    return this.applied;
  }

  applyMessage(stream: string, seq: number, data: Uint8Array): ApplyResult {
    return this.applyMessages(stream, [{ seq, data }])[0]!;
  }

  noteStoredMessage(): number {
    return 0;
  }

  /** Schema messages the stream dropped are never passed over: the definitions they carried would be missing here. */
  passOwnGap(): boolean {
    return false;
  }

  /**
   * After a snapshot was restored underneath: the schema stream's applied sequence is the snapshot's now, and the
   * restored schema is the state changes are told from (the restore recorded it).
   */
  reloadApplied(): void {
    const row = this.db.prepare(`SELECT seq FROM ${quoteIdent(APPLIED_TABLE)} WHERE stream = ?`).get(this.options.stream) as
      | { seq: bigint | number }
      | undefined;
    this.applied = row === undefined ? 0 : Number(row.seq);
    this.baselineHasTables = false;
  }

  /**
   * Apply schema messages in one transaction that records the last sequence. The app's own schema changes not yet
   * noticed are noticed first, so that they are neither lost nor undone. Of another node's message, an object is
   * skipped while this node has a change of it that the stream has not brought back yet: that change comes later
   * in the stream, so every node ends with it. Capture follows the new schema in the same transaction.
   */
  applyMessages(stream: string, messages: readonly StreamMessage[]): ApplyResult[] {
    const { db, logger } = this;
    const before = this.applied;
    const previous = this.options.capturedTables();
    let last = before;
    const results: ApplyResult[] = [];
    const captured = db
      .transaction(() => {
        if (schemaVersion(db) !== this.options.knownSchemaVersion()) {
          // The app's own change first (capture logs the rows of tables it made again or new).
          this.notice(this.options.capture(), previous);
        }
        db.prepare(`INSERT INTO ${quoteIdent(APPLYING_TABLE)} VALUES (1)`).run();
        for (const { seq, data } of messages) {
          if (seq <= last) {
            results.push({ outcome: "duplicate", applied: 0, parked: 0 });
            continue;
          }
          last = seq;
          let message: SchemaMessage;
          try {
            message = decodeSchemaMessage(data);
          } catch (err) {
            if (!(err instanceof DecodeError)) throw err;
            logger.error("set aside a message of the schema stream that is not a valid schema message", { stream, seq, reason: err.message });
            db.prepare(`INSERT INTO ${quoteIdent(PARKED_TABLE)} (stream, seq, tbl, reason, payload, parked_at) VALUES (?, ?, NULL, ?, ?, ?)`).run(
              stream,
              BigInt(seq),
              `undecodable: ${err.message}`,
              Buffer.from(data),
              BigInt(Date.now()),
            );
            results.push({ outcome: "parked", applied: 0, parked: 1 });
            continue;
          }
          if (message.origin === this.options.origin) {
            db.prepare(`DELETE FROM ${quoteIdent(SCHEMA_OUTBOX_TABLE)} WHERE id = ?`).run(BigInt(message.id));
            results.push({ outcome: "applied", applied: 0, parked: 0 });
            continue;
          }
          const wanted = this.applicable(message.changes, seq);
          const changed = applySchemaChanges(db, wanted, logger);
          if (changed > 0)
            logger.info("applied a schema change of another node", { seq, origin: message.origin, objects: wanted.map(describe).join(", ") });
          results.push({ outcome: "applied", applied: wanted.length, parked: 0 });
        }
        // Capture follows while marmot's row is still there: tables rebuilt here hold no new writes to log.
        const result = this.options.capture();
        db.prepare(`DELETE FROM ${quoteIdent(APPLYING_TABLE)}`).run();
        db.prepare(`INSERT INTO ${quoteIdent(APPLIED_TABLE)} (stream, seq) VALUES (?, ?) ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq`).run(
          stream,
          BigInt(last),
        );
        db.prepare(`DELETE FROM ${quoteIdent(SCHEMA_OUTBOX_TABLE)} WHERE published_seq <= ?`).run(BigInt(last));
        recordSchemaState(db, readSchemaState(db, this.options.filter));
        return result;
      })
      .immediate();
    this.applied = last;
    this.options.captured(captured, previous);
    return results;
  }

  /** The changes of a message this node takes: not those of objects it changed itself since, nor of tables it leaves out. */
  private applicable(changes: readonly SchemaChange[], seq: number): SchemaChange[] {
    const pending = new Set<string>();
    const rows = this.db
      .prepare(`SELECT keys FROM ${quoteIdent(SCHEMA_OUTBOX_TABLE)} WHERE published_seq IS NULL OR published_seq > ?`)
      .pluck(true)
      .all(BigInt(seq)) as string[];
    for (const keys of rows) for (const key of JSON.parse(keys) as string[]) pending.add(key);
    // Views, and triggers on views, belong to no table that `[tables]` could leave out.
    const views = new Set(changes.filter((c) => c.type === "view").map((c) => foldCase(c.name)));
    for (const name of this.db.prepare("SELECT name FROM main.sqlite_master WHERE type = 'view'").pluck(true).all() as string[])
      views.add(foldCase(name));
    const travels = (c: SchemaChange) => views.has(foldCase(c.tblName)) || tableTravels(c.tblName, this.options.filter);
    return changes.filter((c) => !pending.has(objectKey(c.type, c.name)) && travels(c));
  }
}

function describe(change: SchemaChange): string {
  return `${change.sql === null ? "dropped" : "defined"} ${change.type} ${change.name}`;
}
