// Applies replicated batches to the local database: one transaction per message (or per run of messages already
// delivered), the stream sequence of the last one recorded inside it.

import type { Database, Statement } from "better-sqlite3";
import { DecodeError } from "../errors.js";
import type { Logger } from "../log.js";
import { decodeBatch, encodeBatch, type ChangeBatch, type WireChange, type WireTable } from "../wire/codec.js";
import { APPLIED_TABLE, APPLYING_TABLE, isInternalName, PARKED_TABLE, ROWID_KEY } from "./names.js";
import { OwnWrites, type ChangeSource, type OwnWritesScan } from "./own-writes.js";
import { quoteIdent } from "./quote.js";
import { rowidAlias } from "./schema.js";
import type { TableInfo } from "./table.js";

export type ApplyOutcome = "applied" | "duplicate" | "parked" | "partly-parked";

export interface ApplyResult {
  outcome: ApplyOutcome;
  applied: number;
  parked: number;
}

interface ParkedChange {
  change: WireChange;
  reason: string;
}

export interface StreamMessage {
  seq: number;
  data: Uint8Array;
}

/** How one wire table's changes of one op are applied here: a statement, or why they cannot be. */
type Plan =
  | { statement: Statement; local: TableInfo; keyPositions: number[]; reason?: undefined }
  | { statement?: undefined; local?: undefined; reason: string };

export interface ApplierOptions {
  /**
   * This node's batch origin, when it publishes its changes. The applier then keeps the app's own newer writes
   * (see own-writes.ts). Without it (publish = false), every change applies.
   */
  origin?: string;
}

/**
 * What one apply call (one transaction) works out once and reuses. Plans, by the decoded table object the changes
 * of a message share: the checks and the statement lookup run once per table of a message, not once per row. And
 * what the own-writes rule reads of the change logs once per transaction.
 */
interface ApplyContext {
  plans: Map<WireTable, { upsert?: Plan; delete?: Plan }>;
  own: OwnWritesScan;
}

const newContext = (): ApplyContext => ({ plans: new Map(), own: new Map() });

const duplicate = (): ApplyResult => ({ outcome: "duplicate", applied: 0, parked: 0 });

/** Why a change cannot be applied here, or undefined when it can. Names come only from the local schema. */
function mismatch(change: WireChange, local: TableInfo | undefined): string | undefined {
  if (!local) return `table "${change.table.name}" does not exist on this node`;
  const wireKey = change.table.keyColumns;
  if (wireKey.length !== local.keyColumns.length || wireKey.some((k, i) => k !== local.keyColumns[i])) {
    return `table "${local.name}" has key (${local.keyColumns.join(", ")}) here, the change has (${wireKey.join(", ")})`;
  }
  if (change.op === "upsert") {
    // Without its key an upsert would insert a made-up row; a repeated column could exceed SQLite's limits and throw.
    const named = new Set<string>();
    for (const c of change.table.columns) {
      if (named.has(c)) return `the change names column "${c}" of table "${local.name}" twice`;
      named.add(c);
    }
    const keyless = local.keyColumns.filter((k) => !named.has(k));
    if (keyless.length > 0) return `the change to table "${local.name}" lacks key column ${keyless.map((k) => `"${k}"`).join(", ")}`;
    const known = new Set(local.columns.map((c) => c.name));
    if (local.rowidKeyed) known.add(ROWID_KEY);
    const missing = change.table.columns.filter((c) => !known.has(c));
    if (missing.length > 0) return `table "${local.name}" has no column ${missing.map((m) => `"${m}"`).join(", ")} on this node`;
  }
  return undefined;
}

export class Applier {
  private tables = new Map<string, TableInfo>();
  private readonly statements = new Map<string, Statement>();
  private readonly applied = new Map<string, number>();
  /** Tables with parked changes: later changes to them wait too, so their order is kept. */
  private readonly parkedTables = new Set<string>();
  private readonly reportedMissing = new Set<string>();
  private readonly ownWrites: OwnWrites;
  /** replicated changes not applied because a newer local change of the row is on its way (since start) */
  superseded = 0;
  /**
   * Whether anything but the app and this applier's statements for a row can change a row here: the app's own
   * triggers (they may fire on applied changes too), or a UNIQUE clash that replaced rows of a table (by table
   * name). Until then, this node's own change back from the stream leaves its row as it is (see OwnWrites).
   */
  private appTriggers = true;
  /** the schema version appTriggers was read at; a trigger created since turns the shortcut off until setTables */
  private triggersReadAt = -1;
  private readonly schemaVersion: Statement;
  private readonly replacedIn = new Set<string>();
  private readonly enterApply: Statement;
  private readonly leaveApply: Statement;
  private readonly recordApplied: Statement;
  private readonly insertParked: Statement;

  constructor(
    private readonly db: Database,
    private readonly logger: Logger,
    options: ApplierOptions = {},
  ) {
    this.ownWrites = new OwnWrites(db, options.origin);
    this.schemaVersion = db.prepare("PRAGMA schema_version").pluck(true);
    this.enterApply = db.prepare(`INSERT INTO ${quoteIdent(APPLYING_TABLE)} VALUES (1)`);
    this.leaveApply = db.prepare(`DELETE FROM ${quoteIdent(APPLYING_TABLE)}`);
    this.recordApplied = db.prepare(
      `INSERT INTO ${quoteIdent(APPLIED_TABLE)} (stream, seq) VALUES (?, ?) ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq`,
    );
    this.insertParked = db.prepare(
      `INSERT INTO ${quoteIdent(PARKED_TABLE)} (stream, seq, tbl, reason, payload, parked_at) VALUES (?, ?, ?, ?, ?, ?)`,
    );
    this.reloadApplied();
  }

  /**
   * Reads the applied sequences and the parked tables from the database again: at start, and after a snapshot was
   * restored underneath (it set both). Own changes stored at or below the new sequences are in the snapshot already.
   */
  reloadApplied(): void {
    const rows = this.db.prepare(`SELECT stream, seq FROM ${quoteIdent(APPLIED_TABLE)}`).all() as { stream: string; seq: bigint }[];
    this.applied.clear();
    for (const row of rows) this.applied.set(row.stream, Number(row.seq));
    for (const [stream, seq] of this.applied) this.ownWrites.appliedUpTo(stream, seq);
    this.reloadParked();
  }

  /** After a restore: the rows are the snapshot's now, not what this run shipped (see OwnWrites.databaseReplaced). */
  databaseReplaced(): void {
    this.ownWrites.databaseReplaced();
    this.reloadApplied();
  }

  /** Reads which tables have parked changes again: another connection (marmot -parked -discard) may have changed them. */
  reloadParked(): void {
    const parked = this.db
      .prepare(`SELECT DISTINCT tbl FROM ${quoteIdent(PARKED_TABLE)} WHERE tbl IS NOT NULL`)
      .pluck(true)
      .all() as string[];
    this.parkedTables.clear();
    for (const t of parked) this.parkedTables.add(t);
  }

  /** The schema to apply against: only these tables and columns are ever named in SQL. */
  setTables(tables: readonly TableInfo[]): void {
    this.tables = new Map(tables.map((t) => [t.name, t]));
    const triggers = this.db.prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'").pluck(true).all() as string[];
    this.appTriggers = triggers.some((name) => !isInternalName(name));
    this.triggersReadAt = Number(this.schemaVersion.get());
    this.statements.clear();
    this.ownWrites.reset();
  }

  /** Rows of this node JetStream stored that it has not applied back yet (the own-writes record, a metric). */
  get storedRows(): number {
    return this.ownWrites.size;
  }

  /**
   * The shipper's word that JetStream stored this node's latest changes of these rows (see rowKeyString) at `seq`
   * of `stream`. Until this node has applied the stream that far, earlier changes of those rows are superseded.
   */
  noteStored(stream: string, seq: number, rowKeys: readonly string[]): void {
    this.ownWrites.noteStored(stream, seq, rowKeys, this.appliedSequence(stream));
  }

  /**
   * The same word, read back from the stream at start: a message of this node that JetStream stored at `seq`
   * before the last run ended, and that this node has not applied yet. Returns how many rows it holds (0 when the
   * message is another node's, or not a batch at all).
   */
  noteStoredMessage(stream: string, seq: number, data: Uint8Array): number {
    return this.ownWrites.noteStoredMessage(stream, seq, data, this.appliedSequence(stream));
  }

  /**
   * For a node that does not apply (replicate = false): a message of its own that the stream holds, found at start.
   * Its changes leave the change log, as they would when applied back. Returns how many change-log rows went.
   */
  forgetOwnMessage(data: Uint8Array): number {
    return this.ownWrites.forgetOwnMessage(data, (change) => {
      const local = this.tables.get(change.table.name);
      return local !== undefined && mismatch(change, local) === undefined ? local : undefined;
    });
  }

  appliedSequence(stream: string): number {
    return this.applied.get(stream) ?? 0;
  }

  /**
   * The stream dropped messages `from`..`to` before this node applied them. When JetStream stored every one of them
   * for this node (this run's shipper said so), nothing is missing: their changes came from this database, and the
   * shipper removed them from the change log only after that. The applied sequence then moves past them (true).
   * Otherwise another node's changes are gone and only a snapshot can bring them (false).
   */
  passOwnGap(stream: string, from: number, to: number): boolean {
    if (!this.ownWrites.enabled || to < from || !this.ownWrites.storedEvery(stream, from, to)) return false;
    this.recordApplied.run(stream, BigInt(to));
    this.applied.set(stream, to);
    this.ownWrites.appliedUpTo(stream, to);
    return true;
  }

  hasParked(): boolean {
    return this.parkedTables.size > 0;
  }

  /** Apply one stream message. Never throws for bad content: what cannot be applied is parked. */
  applyMessage(stream: string, seq: number, data: Uint8Array): ApplyResult {
    return this.applyMessages(stream, [{ seq, data }])[0]!;
  }

  /**
   * Apply messages of one stream in their order, all in one transaction that records the last sequence: when the
   * stream runs ahead, messages already delivered share one commit. Those at or below the applied sequence are
   * duplicates and change nothing. Throws (and applies none of them) only when the database fails.
   */
  applyMessages(stream: string, messages: readonly StreamMessage[]): ApplyResult[] {
    const before = this.appliedSequence(stream);
    if (messages.every((m) => m.seq <= before)) return messages.map(duplicate);
    let last = before;
    const results: ApplyResult[] = [];
    const context = newContext();
    const parkedTablesBefore = new Set(this.parkedTables);
    try {
      this.db
        .transaction(() => {
          // The schema changed since setTables (an app trigger may be new): no shortcut until it runs again.
          if (!this.appTriggers && Number(this.schemaVersion.get()) !== this.triggersReadAt) this.appTriggers = true;
          this.enterApply.run();
          for (const { seq, data } of messages) {
            if (seq <= last) {
              results.push(duplicate());
              continue;
            }
            results.push(this.applyOne(stream, seq, data, context));
            last = seq;
          }
          this.leaveApply.run();
          this.recordApplied.run(stream, BigInt(last));
        })
        .immediate();
    } catch (err) {
      // Rolled back: tables parked by these messages are not parked after all.
      this.parkedTables.clear();
      for (const t of parkedTablesBefore) this.parkedTables.add(t);
      throw err;
    }
    this.applied.set(stream, last);
    this.ownWrites.appliedUpTo(stream, last);
    return results;
  }

  /** One message, inside the caller's transaction. */
  private applyOne(stream: string, seq: number, data: Uint8Array, context: ApplyContext): ApplyResult {
    let batch: ChangeBatch;
    try {
      batch = decodeBatch(data);
    } catch (err) {
      if (!(err instanceof DecodeError)) throw err;
      this.logger.error("set aside a message that is not a valid marmot batch", { stream, seq, reason: err.message });
      this.insertParked.run(stream, BigInt(seq), null, `undecodable: ${err.message}`, Buffer.from(data), BigInt(Date.now()));
      return { outcome: "parked", applied: 0, parked: 1 };
    }
    let appliedCount = 0;
    const parked: ParkedChange[] = [];
    // Tables with a change parked earlier in this message: their later changes wait behind it, as across messages.
    const waitingHere = new Set<string>();
    const source: ChangeSource = { stream, seq, own: this.ownWrites.isOwn(batch.origin) };
    for (const change of batch.changes) {
      const name = change.table.name;
      const reason =
        this.parkedTables.has(name) || waitingHere.has(name)
          ? `earlier changes to table "${name}" are waiting`
          : this.applyChange(change, source, context);
      if (reason === undefined) appliedCount++;
      else {
        parked.push({ change, reason });
        waitingHere.add(name);
      }
    }
    this.park(stream, seq, batch.origin, parked);
    const outcome: ApplyOutcome = parked.length === 0 ? "applied" : appliedCount === 0 ? "parked" : "partly-parked";
    return { outcome, applied: appliedCount, parked: parked.length };
  }

  /**
   * Try the parked changes again, oldest first (after the schema changed).
   * Returns how many were applied; those that still cannot be applied stay parked.
   *
   * `settledBefore` (ms since the epoch): every schema change published before a change parked before then has been
   * applied here since (see schema-sync.ts: a node publishes its schema changes before the rows captured after them).
   * Such a change that still does not fit is settled: of a table missing here (dropped meanwhile) it is obsolete and
   * goes; an upsert naming columns missing here (a concurrent schema change won over its origin's) applies without
   * them. A key that differs stays parked: that is no question of order.
   */
  retryParked(settledBefore?: number): number {
    const rows = this.db
      .prepare(`SELECT id, stream, seq, tbl, payload, parked_at FROM ${quoteIdent(PARKED_TABLE)} WHERE tbl IS NOT NULL ORDER BY id`)
      .all() as { id: bigint; stream: string; seq: bigint; tbl: string; payload: Buffer; parked_at: bigint | number }[];
    if (rows.length === 0) return 0;
    let appliedCount = 0;
    const settled = { obsolete: 0, narrowed: 0 };
    const stillWaiting = new Set<string>();
    const remove = this.db.prepare(`DELETE FROM ${quoteIdent(PARKED_TABLE)} WHERE id = ?`);
    this.db
      .transaction(() => {
        this.enterApply.run();
        for (const row of rows) {
          // Keep each table's order: once one of its changes waits, the later ones wait behind it.
          if (stillWaiting.has(row.tbl)) continue;
          const batch = decodeBatch(row.payload);
          const change = batch.changes[0]!;
          const source = { stream: row.stream, seq: Number(row.seq), own: this.ownWrites.isOwn(batch.origin) };
          if (this.applyChange(change, source) === undefined) {
            remove.run(row.id);
            appliedCount++;
          } else if (settledBefore !== undefined && Number(row.parked_at) < settledBefore && this.settle(change, source, settled)) {
            remove.run(row.id);
          } else {
            stillWaiting.add(row.tbl);
          }
        }
        this.leaveApply.run();
      })
      .immediate();
    this.parkedTables.clear();
    for (const t of stillWaiting) this.parkedTables.add(t);
    if (appliedCount > 0) this.logger.info("applied changes that were waiting for the schema", { changes: appliedCount });
    if (settled.obsolete + settled.narrowed > 0) {
      this.logger.warn("changes waited for a table or columns this node will not get: the schema stream dropped or replaced them", {
        dropped_with_their_table: settled.obsolete,
        applied_without_missing_columns: settled.narrowed,
      });
    }
    return appliedCount + settled.narrowed;
  }

  /** See retryParked: true when the change is settled (and may leave the parked table), counting how. */
  private settle(change: WireChange, source: ChangeSource, counts: { obsolete: number; narrowed: number }): boolean {
    const local = this.tables.get(change.table.name);
    if (local === undefined) {
      counts.obsolete++;
      return true;
    }
    if (change.op !== "upsert") return false;
    const known = new Set(local.columns.map((c) => c.name));
    if (local.rowidKeyed) known.add(ROWID_KEY);
    const kept = change.table.columns.flatMap((name, i) => (known.has(name) ? [i] : []));
    if (kept.length === change.table.columns.length) return false;
    const table: WireTable = { ...change.table, columns: kept.map((i) => change.table.columns[i]!) };
    const narrowed: WireChange = { ...change, table, values: kept.map((i) => change.values[i]!) };
    if (this.applyChange(narrowed, source) !== undefined) return false;
    counts.narrowed++;
    return true;
  }

  private park(stream: string, seq: number, origin: string, parked: ParkedChange[]): void {
    const now = BigInt(Date.now());
    for (const { change, reason } of parked) {
      const payload = encodeBatch({ origin, changes: [change] });
      this.insertParked.run(stream, BigInt(seq), change.table.name, reason, payload, now);
      if (!this.parkedTables.has(change.table.name) || !this.reportedMissing.has(change.table.name)) {
        this.reportedMissing.add(change.table.name);
        this.logger.warn("changes wait until this node's schema can take them", { table: change.table.name, reason, stream, seq });
      }
      this.parkedTables.add(change.table.name);
    }
  }

  /**
   * Apply one change; returns why it cannot be applied, or undefined when it was applied or is superseded by a
   * newer local change of its row.
   */
  private applyChange(change: WireChange, source: ChangeSource, context: ApplyContext = newContext()): string | undefined {
    let byOp = context.plans.get(change.table);
    if (!byOp) context.plans.set(change.table, (byOp = {}));
    let plan = byOp[change.op];
    if (!plan) {
      const local = this.tables.get(change.table.name);
      const reason = mismatch(change, local);
      plan =
        reason !== undefined
          ? { reason }
          : {
              statement: this.statementFor(local!, change),
              local: local!,
              keyPositions: change.op === "upsert" ? local!.keyColumns.map((k) => change.table.columns.indexOf(k)) : [],
            };
      byOp[change.op] = plan;
    }
    if (plan.reason !== undefined) return plan.reason;
    if (this.ownWrites.enabled) {
      const key = change.op === "upsert" ? plan.keyPositions.map((p) => change.values[p]!) : change.values;
      const unchangedSinceShipped = !this.appTriggers && !this.replacedIn.has(plan.local.name);
      if (this.ownWrites.supersedes(plan.local, key, change, source, context.own, unchangedSinceShipped)) {
        this.superseded++;
        return undefined;
      }
    }
    try {
      plan.statement.run(change.values);
      return undefined;
    } catch (err) {
      const code = (err as { code?: string }).code ?? "";
      if (code === "SQLITE_CONSTRAINT_UNIQUE" && change.op === "upsert") return this.replaceConflicting(plan.local, change);
      if (code.startsWith("SQLITE_CONSTRAINT") || code === "SQLITE_MISMATCH" || code === "SQLITE_TOOBIG") {
        return `${code}: ${(err as Error).message}`;
      }
      throw err;
    }
  }

  /**
   * Two nodes wrote rows that clash on a UNIQUE column (the same email under two ids, say). The change later in the
   * stream wins, as it does for a row's own key: the clashing row goes. Every node applies the stream in the same
   * order, so every node removes the same row, and they converge instead of stalling the table.
   */
  private replaceConflicting(local: TableInfo, change: WireChange): string | undefined {
    const ident = (name: string) => (local.rowidKeyed && name === ROWID_KEY ? rowidAlias(local) : quoteIdent(name));
    const columns = change.table.columns.map(ident);
    const cacheKey = `replace\u0000${local.name}\u0000${change.table.columns.join("\u0000")}`;
    let statement = this.statements.get(cacheKey);
    if (!statement) {
      statement = this.db.prepare(
        `INSERT OR REPLACE INTO ${quoteIdent(local.name)} (${columns.join(", ")}) VALUES (${columns.map(() => "?").join(", ")})`,
      );
      this.statements.set(cacheKey, statement);
    }
    this.replacedIn.add(local.name);
    try {
      const replaced = statement.run(change.values).changes;
      this.logger.warn("a replicated row replaced a row that clashed with it on a UNIQUE column (the later write wins)", {
        table: local.name,
        rows: replaced,
      });
      return undefined;
    } catch (err) {
      const code = (err as { code?: string }).code ?? "";
      if (code.startsWith("SQLITE_CONSTRAINT")) return `${code}: ${(err as Error).message}`;
      throw err;
    }
  }

  private statementFor(table: TableInfo, change: WireChange): Statement {
    const cacheKey = `${change.op}\u0000${table.name}\u0000${(change.op === "upsert" ? change.table.columns : change.table.keyColumns).join("\u0000")}`;
    let statement = this.statements.get(cacheKey);
    if (statement) return statement;
    const rowid = table.rowidKeyed ? rowidAlias(table) : "";
    const ident = (name: string) => (table.rowidKeyed && name === ROWID_KEY ? rowid : quoteIdent(name));
    const target = quoteIdent(table.name);
    const keys = table.keyColumns.map(ident);
    if (change.op === "delete") {
      statement = this.db.prepare(`DELETE FROM ${target} WHERE ${keys.map((k) => `${k} IS ?`).join(" AND ")}`);
    } else {
      const columns = change.table.columns.map(ident);
      const keySet = new Set(keys);
      const updates = columns.filter((c) => !keySet.has(c)).map((c) => `${c} = excluded.${c}`);
      const onConflict = updates.length > 0 ? `DO UPDATE SET ${updates.join(", ")}` : "DO NOTHING";
      statement = this.db.prepare(
        `INSERT INTO ${target} (${columns.join(", ")}) VALUES (${columns.map(() => "?").join(", ")}) ON CONFLICT (${keys.join(", ")}) ${onConflict}`,
      );
    }
    this.statements.set(cacheKey, statement);
    return statement;
  }
}
