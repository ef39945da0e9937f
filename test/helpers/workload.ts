// A seeded random app workload for e2e tests: concurrent writers through the sqlite3 CLI, and the checks after them.

import assert from "node:assert/strict";
import { quoteIdent } from "../../src/sqlite/quote.js";
import { APPLIED_TABLE, changeLogTable, PARKED_TABLE } from "../../src/sqlite/names.js";
import { sleep, type TestCluster } from "./marmot.js";
import { sqlite3Async } from "./sqlite.js";

/** mulberry32: tiny, fast and good enough to pick operations; the same seed gives the same sequence everywhere. */
export class Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** 0 <= n < max */
  int(max: number): number {
    return Math.floor(this.next() * max);
  }

  between(min: number, max: number): number {
    return min + this.int(max - min + 1);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  u32(): number {
    return Math.floor(this.next() * 4294967296) >>> 0;
  }

  /** A derived generator, so that one writer's choices do not depend on how many numbers another one drew. */
  fork(salt: number): Random {
    return new Random((this.u32() ^ Math.imul(salt + 1, 0x9e3779b9)) >>> 0);
  }
}

/** The seeds a run uses: MARMOT_TEST_SEED replays one; otherwise `count` fresh ones. */
export function testSeeds(count: number): number[] {
  const fixed = process.env.MARMOT_TEST_SEED;
  if (fixed !== undefined && fixed !== "") {
    const seed = Number(fixed);
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff)
      throw new Error(`MARMOT_TEST_SEED must be an integer in 0..4294967295, not ${fixed}`);
    return [seed];
  }
  const first = (Date.now() ^ (process.pid << 16)) >>> 0;
  return Array.from({ length: count }, (_, i) => (first + i * 7919) >>> 0);
}

export function longProfile(): boolean {
  return process.env.MARMOT_TEST_PROFILE === "long";
}

interface TableSpec {
  name: string;
  /** declared columns and their declared types (affinity decides what a written literal becomes) */
  columns: { name: string; decl: string }[];
  ddl: string;
  /** the ORDER BY that lists rows the same way on every node */
  order: string;
}

const TABLES: TableSpec[] = [
  {
    name: "items",
    columns: [
      { name: "id", decl: "INTEGER" },
      { name: "name", decl: "TEXT" },
      { name: "qty", decl: "INTEGER" },
      { name: "price", decl: "REAL" },
      { name: "data", decl: "BLOB" },
      { name: "extra", decl: "" },
    ],
    ddl: "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB, extra)",
    order: "id",
  },
  {
    name: "pairs",
    columns: [
      { name: "owner", decl: "TEXT" },
      { name: "slot", decl: "INTEGER" },
      { name: "v", decl: "" },
      { name: "note", decl: "TEXT" },
    ],
    ddl: "CREATE TABLE pairs (owner TEXT NOT NULL, slot INTEGER NOT NULL, v, note TEXT, PRIMARY KEY (owner, slot))",
    order: "owner, slot",
  },
  {
    name: "loose",
    columns: [
      { name: "a", decl: "" },
      { name: "b", decl: "TEXT" },
      { name: "c", decl: "INTEGER" },
    ],
    ddl: "CREATE TABLE loose (a, b TEXT, c INTEGER)",
    order: "rowid",
  },
  {
    name: "kv",
    columns: [
      { name: "k", decl: "TEXT" },
      { name: "v", decl: "" },
      { name: "n", decl: "REAL" },
    ],
    ddl: "CREATE TABLE kv (k TEXT PRIMARY KEY, v, n REAL) WITHOUT ROWID",
    order: "k",
  },
  {
    name: "owned",
    columns: [
      { name: "node", decl: "INTEGER" },
      { name: "k", decl: "INTEGER" },
      { name: "v", decl: "" },
    ],
    // Each node's app writes only its own rows here: their final state must be exactly its last commit.
    ddl: "CREATE TABLE owned (node INTEGER NOT NULL, k INTEGER NOT NULL, v, PRIMARY KEY (node, k))",
    order: "node, k",
  },
  {
    name: "accounts",
    columns: [
      { name: "id", decl: "INTEGER" },
      { name: "email", decl: "TEXT" },
      { name: "v", decl: "" },
    ],
    // Rows with different keys clash on email: with several shards, every node must still keep the same ones.
    ddl: "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT UNIQUE, v)",
    order: "id",
  },
  {
    name: "journal",
    columns: [
      { name: "id", decl: "INTEGER" },
      { name: "node", decl: "INTEGER" },
      { name: "batch", decl: "INTEGER" },
      { name: "body", decl: "TEXT" },
    ],
    // Append-only: every committed row must reach every node, whatever happened in between.
    ddl: "CREATE TABLE journal (id INTEGER PRIMARY KEY, node INTEGER NOT NULL, batch INTEGER NOT NULL, body TEXT)",
    order: "id",
  },
];

export const WORKLOAD_SCHEMA = TABLES.map((t) => `${t.ddl};`).join("\n");
export const WORKLOAD_TABLES = TABLES.map((t) => t.name);

const INT64_MAX = "9223372036854775807";
const INT64_MIN = "-9223372036854775808";

/** Hot keys: few enough that the three writers keep colliding on the same rows. */
const ITEM_KEYS = [...Array.from({ length: 18 }, (_, i) => String(i + 1)), INT64_MAX, INT64_MIN];
const OWNERS = ["a", "o'neil", "🦫", "Ünï"].map(textLiteral);
const SLOTS = ["0", "1", "2", "3", "4"];
const LOOSE_ROWIDS = Array.from({ length: 20 }, (_, i) => String(i + 1));
const OWNED_KEYS = Array.from({ length: 8 }, (_, i) => String(i));
const ACCOUNT_IDS = Array.from({ length: 12 }, (_, i) => String(i + 1));
const EMAILS = ["a@example.com", "b@example.com", "c@example.com", "d@example.com", "ünï@example.com", "NULL"].map((e) =>
  e === "NULL" ? e : textLiteral(e),
);
const KV_KEYS = [...Array.from({ length: 18 }, (_, i) => `k${i}`), "it's", "日本"].map(textLiteral);

const TEXT_PIECES = [
  "plain",
  "it's",
  '"dq"',
  "🦫",
  "Ünïcödé",
  "日本語",
  "line\nbreak",
  "tab\there",
  "",
  " ",
  "%_",
  "\\",
  "NULL",
  "x'00'",
  "'",
  "Ω≈ç√",
];
const REALS = ["0.1", "-2.5", "1.0", "0.0", "-0.0", "1e308", "-1.5e-300", "3.141592653589793", "1e999", "-1e999", "4.9e-324"];
const INTS = ["0", "1", "-1", INT64_MAX, INT64_MIN, "9007199254740993", "-9007199254740993", "2147483648"];

function textLiteral(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

function intLiteral(r: Random): string {
  switch (r.int(4)) {
    case 0:
      return r.pick(INTS);
    case 1:
      return String(BigInt.asIntN(64, (BigInt(r.u32()) << 32n) | BigInt(r.u32())));
    default:
      return String(r.int(2000) - 1000);
  }
}

function realLiteral(r: Random): string {
  if (r.chance(0.5)) return r.pick(REALS);
  const x = (r.next() - 0.5) * 10 ** r.between(-5, 12);
  const text = x.toPrecision(17);
  return /[.eE]/.test(text) ? text : `${text}.0`;
}

function blobLiteral(r: Random): string {
  if (r.chance(0.03)) return `zeroblob(${r.between(1000, 5000)})`;
  const bytes = Array.from({ length: r.int(24) }, () => r.int(256).toString(16).padStart(2, "0"));
  return `x'${bytes.join("")}'`;
}

function randomText(r: Random): string {
  return Array.from({ length: r.between(1, 3) }, () => r.pick(TEXT_PIECES)).join(r.pick(["", " ", "|"]));
}

function anyLiteral(r: Random): string {
  const roll = r.next();
  if (roll < 0.25) return intLiteral(r);
  if (roll < 0.45) return realLiteral(r);
  if (roll < 0.7) return textLiteral(randomText(r));
  if (roll < 0.85) return blobLiteral(r);
  return "NULL";
}

/** Everything the writers did: the literals they wrote, per table and column, and the fate of each journal row. */
export class WorkloadRecord {
  /** "table.column" -> the SQL expressions written into it (a superset: a failed batch's values count too) */
  readonly written = new Map<string, Set<string>>();
  /** journal ids of batches that committed (the sqlite3 process succeeded) */
  readonly committed = new Set<number>();
  /** the same, in the order the writers learned of each commit, with the node and the time */
  readonly commits: { id: number; node: number; at: number }[] = [];
  /** journal ids of batches that rolled back on purpose: they must appear nowhere */
  readonly rolledBack = new Set<number>();
  /** journal ids of batches that failed: they may or may not have committed */
  readonly uncertain = new Set<number>();
  readonly failures: string[] = [];
  batches = 0;
  /** node -> its rows of table owned as its app last committed them: k -> the literal of v */
  readonly owned = new Map<number, Map<string, string>>();
  /** nodes with a failed batch: their owned rows may hold either state */
  readonly ownedUncertain = new Set<number>();

  wrote(table: string, column: string, literal: string): void {
    const key = `${table}.${column}`;
    let set = this.written.get(key);
    if (!set) this.written.set(key, (set = new Set()));
    set.add(literal);
  }
}

interface Batch {
  sql: string;
  journalId: number;
  rollback: boolean;
  /** this node's owned rows once the batch committed */
  owned: Map<string, string>;
}

/** One app's writer on one node: each batch is a separate sqlite3 process, as a short-lived app would be. */
export class WorkloadWriter {
  private batchNo = 0;
  /** during a burst, keys come from this narrow window of each table's hot keys */
  private focus: { start: number; size: number } | undefined;
  /** this node's owned rows as they will be if the batch being built commits */
  private owned = new Map<string, string>();

  constructor(
    readonly node: number,
    private readonly r: Random,
    private readonly record: WorkloadRecord,
    /** tells the journal ids of one run of writers from those of another run on the same cluster */
    private readonly phase = 0,
  ) {}

  nextBatch(): Batch {
    const r = this.r;
    this.batchNo++;
    const journalId = (this.phase * 10 + this.node) * 10_000_000 + this.batchNo;
    this.owned = new Map(this.record.owned.get(this.node) ?? []);
    const journal = this.journalInsert(journalId);
    const pragma = r.chance(0.3) ? `PRAGMA trusted_schema = ${r.int(2)};\n` : "";
    const roll = r.next();
    if (roll < 0.35) {
      // autocommit statements: the journal row goes last, so success of the process means all of them committed
      const ops = Array.from({ length: r.between(1, 3) }, () => this.operation());
      return { sql: `${pragma}${ops.join("\n")}\n${journal}\n`, journalId, rollback: false, owned: this.owned };
    }
    if (roll < 0.45) {
      // A burst: many changes to the same few rows in one transaction, so one shipping round holds several changes
      // of a row and only its last state may win.
      this.focus = { start: r.int(20), size: r.between(1, 3) };
      const burst = Array.from({ length: r.between(15, 40) }, () => this.operation());
      this.focus = undefined;
      return { sql: `${pragma}BEGIN IMMEDIATE;\n${burst.join("\n")}\n${journal}\nCOMMIT;\n`, journalId, rollback: false, owned: this.owned };
    }
    const ops = Array.from({ length: r.between(2, 10) }, () => this.operation());
    if (roll < 0.5) {
      return { sql: `${pragma}BEGIN;\n${ops.join("\n")}\n${journal}\nROLLBACK;\n`, journalId, rollback: true, owned: this.owned };
    }
    return { sql: `${pragma}BEGIN IMMEDIATE;\n${ops.join("\n")}\n${journal}\nCOMMIT;\n`, journalId, rollback: false, owned: this.owned };
  }

  private journalInsert(id: number): string {
    const body = textLiteral(`node ${this.node} batch ${this.batchNo} ${randomText(this.r)}`);
    this.record.wrote("journal", "id", String(id));
    this.record.wrote("journal", "node", String(this.node));
    this.record.wrote("journal", "batch", String(this.batchNo));
    this.record.wrote("journal", "body", body);
    return `INSERT INTO journal (id, node, batch, body) VALUES (${id}, ${this.node}, ${this.batchNo}, ${body});`;
  }

  private operation(): string {
    switch (this.r.int(6)) {
      case 5:
        return this.accountsOp();
      case 0:
        return this.itemsOp();
      case 1:
        return this.pairsOp();
      case 2:
        return this.looseOp();
      case 3:
        return this.kvOp();
      default:
        return this.ownedOp();
    }
  }

  /** Literals for `columns` of `table`, recorded as written. */
  private values(table: string, columns: string[]): string[] {
    return columns.map((column) => {
      const literal = anyLiteral(this.r);
      this.record.wrote(table, column, literal);
      return literal;
    });
  }

  /** One of the hot keys (during a burst, one of the few in focus). */
  private hot(choices: readonly string[]): string {
    const focus = this.focus;
    if (!focus) return this.r.pick(choices);
    return choices[(focus.start + this.r.int(focus.size)) % choices.length]!;
  }

  private key(table: string, column: string, choices: readonly string[]): string {
    const literal = this.hot(choices);
    this.record.wrote(table, column, literal);
    return literal;
  }

  private someOf(columns: string[]): string[] {
    const chosen = columns.filter(() => this.r.chance(0.5));
    return chosen.length > 0 ? chosen : [this.r.pick(columns)];
  }

  private insertVerb(): string {
    return this.r.pick(["INSERT OR IGNORE", "INSERT OR REPLACE", "REPLACE", "INSERT"]);
  }

  /** An insert of a row whose key may exist: each verb, and DO NOTHING for the plain INSERT, keeps the batch going. */
  private insert(table: string, columns: string[], values: string[]): string {
    const verb = this.insertVerb();
    const tail = verb === "INSERT" ? " ON CONFLICT DO NOTHING" : "";
    return `${verb} INTO ${table} (${columns.join(", ")}) VALUES (${values.join(", ")})${tail};`;
  }

  private set(table: string, columns: string[]): string {
    return columns.map((c) => `${c} = ${this.values(table, [c])[0]!}`).join(", ");
  }

  private itemsOp(): string {
    const r = this.r;
    const columns = ["name", "qty", "price", "data", "extra"];
    const id = () => this.key("items", "id", ITEM_KEYS);
    switch (r.int(6)) {
      case 0:
        return this.insert("items", ["id", ...columns], [id(), ...this.values("items", columns)]);
      case 1: {
        const set = this.someOf(columns);
        const values = this.values("items", set);
        const update = set.map((c) => `${c} = excluded.${c}`).join(", ");
        return `INSERT INTO items (id, ${set.join(", ")}) VALUES (${id()}, ${values.join(", ")}) ON CONFLICT (id) DO UPDATE SET ${update};`;
      }
      case 2: {
        const where = r.chance(0.7) ? `id = ${id()}` : `id IN (${id()}, ${id()}, ${id()})`;
        return `UPDATE items SET ${this.set("items", this.someOf(columns))} WHERE ${where};`;
      }
      case 3:
        return r.chance(0.8)
          ? `DELETE FROM items WHERE id = ${id()};`
          : `DELETE FROM items WHERE id BETWEEN ${r.between(1, 18)} AND ${r.between(1, 18)};`;
      case 4:
        return `UPDATE items SET ${this.set("items", this.someOf(columns))} WHERE id BETWEEN ${r.between(1, 18)} AND ${r.between(1, 18)};`;
      default:
        // a key change onto a key that may be taken: IGNORE skips it, REPLACE drops the other row
        return `UPDATE OR ${r.pick(["IGNORE", "REPLACE"])} items SET id = ${id()} WHERE id = ${id()};`;
    }
  }

  private pairsOp(): string {
    const r = this.r;
    const owner = () => this.key("pairs", "owner", OWNERS);
    const slot = () => this.key("pairs", "slot", SLOTS);
    switch (r.int(5)) {
      case 0:
        return this.insert("pairs", ["owner", "slot", "v", "note"], [owner(), slot(), ...this.values("pairs", ["v", "note"])]);
      case 1: {
        const [v, note] = this.values("pairs", ["v", "note"]);
        return `INSERT INTO pairs (owner, slot, v, note) VALUES (${owner()}, ${slot()}, ${v}, ${note}) ON CONFLICT (owner, slot) DO UPDATE SET v = excluded.v, note = excluded.note;`;
      }
      case 2: {
        const where = r.chance(0.7) ? `owner = ${owner()} AND slot = ${slot()}` : `owner = ${owner()}`;
        return `UPDATE pairs SET ${this.set("pairs", this.someOf(["v", "note"]))} WHERE ${where};`;
      }
      case 3:
        return r.chance(0.8) ? `DELETE FROM pairs WHERE owner = ${owner()} AND slot = ${slot()};` : `DELETE FROM pairs WHERE slot = ${slot()};`;
      default: {
        const verb = `UPDATE OR ${r.pick(["IGNORE", "REPLACE"])} pairs`;
        return r.chance(0.5)
          ? `${verb} SET slot = ${slot()} WHERE owner = ${owner()} AND slot = ${slot()};`
          : `${verb} SET owner = ${owner()}, slot = ${slot()} WHERE owner = ${owner()} AND slot = ${slot()};`;
      }
    }
  }

  private looseOp(): string {
    const r = this.r;
    const columns = ["a", "b", "c"];
    const rowid = () => this.hot(LOOSE_ROWIDS);
    switch (r.int(7)) {
      case 0:
        return this.insert("loose", ["rowid", ...columns], [rowid(), ...this.values("loose", columns)]);
      case 1:
        // the app lets SQLite choose the rowid: the nodes choose the same one at the same time
        return `INSERT INTO loose (a, b, c) VALUES (${this.values("loose", columns).join(", ")});`;
      case 2: {
        const set = this.someOf(columns);
        const values = this.values("loose", set);
        return `INSERT INTO loose (rowid, ${set.join(", ")}) VALUES (${rowid()}, ${values.join(", ")}) ON CONFLICT (rowid) DO UPDATE SET ${set.map((c) => `${c} = excluded.${c}`).join(", ")};`;
      }
      case 3:
        return `UPDATE loose SET ${this.set("loose", this.someOf(columns))} WHERE rowid = ${rowid()};`;
      case 4:
        return r.chance(0.7) ? `DELETE FROM loose WHERE rowid = ${rowid()};` : "DELETE FROM loose WHERE rowid > 20;";
      default:
        return `UPDATE OR ${r.pick(["IGNORE", "REPLACE"])} loose SET rowid = ${rowid()} WHERE rowid = ${rowid()};`;
    }
  }

  private kvOp(): string {
    const r = this.r;
    const k = () => this.key("kv", "k", KV_KEYS);
    switch (r.int(5)) {
      case 0:
        return this.insert("kv", ["k", "v", "n"], [k(), ...this.values("kv", ["v", "n"])]);
      case 1: {
        const [v, n] = this.values("kv", ["v", "n"]);
        return `INSERT INTO kv (k, v, n) VALUES (${k()}, ${v}, ${n}) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = excluded.n;`;
      }
      case 2:
        return `UPDATE kv SET ${this.set("kv", this.someOf(["v", "n"]))} WHERE k = ${k()};`;
      case 3:
        return `DELETE FROM kv WHERE k = ${k()};`;
      default:
        return `UPDATE OR ${r.pick(["IGNORE", "REPLACE"])} kv SET k = ${k()} WHERE k = ${k()};`;
    }
  }

  /** Rows that clash on a UNIQUE email: only the forms that resolve a clash locally, so the app never fails. */
  private accountsOp(): string {
    const r = this.r;
    const id = () => this.key("accounts", "id", ACCOUNT_IDS);
    const email = () => this.key("accounts", "email", EMAILS);
    switch (r.int(5)) {
      case 0:
      case 1: {
        const [v] = this.values("accounts", ["v"]);
        return `INSERT OR REPLACE INTO accounts (id, email, v) VALUES (${id()}, ${email()}, ${v});`;
      }
      case 2:
        return `UPDATE OR ${r.pick(["IGNORE", "REPLACE"])} accounts SET email = ${email()} WHERE id = ${id()};`;
      case 3: {
        const [v] = this.values("accounts", ["v"]);
        return `INSERT OR IGNORE INTO accounts (id, email, v) VALUES (${id()}, ${email()}, ${v});`;
      }
      default:
        return r.chance(0.5) ? `DELETE FROM accounts WHERE email = ${email()};` : `DELETE FROM accounts WHERE id = ${id()};`;
    }
  }

  /** Rows only this node writes: the model follows each statement, as SQLite will execute it. */
  private ownedOp(): string {
    const r = this.r;
    const n = this.node;
    const k = () => this.key("owned", "k", OWNED_KEYS);
    this.record.wrote("owned", "node", String(n));
    const where = (key: string) => `node = ${n} AND k = ${key}`;
    switch (r.int(5)) {
      case 0: {
        const key = k();
        const [v] = this.values("owned", ["v"]);
        this.owned.set(key, v!);
        return `INSERT INTO owned (node, k, v) VALUES (${n}, ${key}, ${v}) ON CONFLICT (node, k) DO UPDATE SET v = excluded.v;`;
      }
      case 1: {
        const key = k();
        const [v] = this.values("owned", ["v"]);
        if (!this.owned.has(key)) this.owned.set(key, v!);
        return `INSERT OR IGNORE INTO owned (node, k, v) VALUES (${n}, ${key}, ${v});`;
      }
      case 2: {
        const key = k();
        const [v] = this.values("owned", ["v"]);
        if (this.owned.has(key)) this.owned.set(key, v!);
        return `UPDATE owned SET v = ${v} WHERE ${where(key)};`;
      }
      case 3: {
        const key = k();
        this.owned.delete(key);
        return `DELETE FROM owned WHERE ${where(key)};`;
      }
      default: {
        const from = k();
        const to = k();
        const v = this.owned.get(from);
        if (v !== undefined && from !== to) {
          this.owned.delete(from);
          this.owned.set(to, v);
        }
        return `UPDATE OR REPLACE owned SET k = ${to} WHERE ${where(from)};`;
      }
    }
  }

  /** Run one batch against the database; records its outcome. */
  async runBatch(dbPath: string): Promise<void> {
    const batch = this.nextBatch();
    this.record.batches++;
    try {
      await sqlite3Async(dbPath, batch.sql);
      if (batch.rollback) {
        this.record.rolledBack.add(batch.journalId);
      } else {
        this.record.committed.add(batch.journalId);
        this.record.commits.push({ id: batch.journalId, node: this.node, at: Date.now() });
        this.record.owned.set(this.node, batch.owned);
      }
    } catch (err) {
      this.record.uncertain.add(batch.journalId);
      this.record.ownedUncertain.add(this.node);
      this.record.failures.push(`node ${this.node}, journal id ${batch.journalId}: ${(err as Error).message.trim()}\n${batch.sql}`);
    }
  }
}

export interface WorkloadRun {
  /** ask the writers to finish their current batch and stop */
  stop(): void;
  /** resolves when every writer has stopped */
  done: Promise<void>;
}

/**
 * Start one writer per node: each runs up to `batches` batches, one after the other, with a random pause between
 * them, until stop() is called. Only the choice of operations is seeded; their interleaving is not. Runs of writers
 * one after the other on the same cluster and record take distinct `phase` numbers (their journal ids differ).
 */
export function startWriters(
  cluster: TestCluster,
  seed: number,
  record: WorkloadRecord,
  options: { batches: number; maxPauseMs?: number; phase?: number },
): WorkloadRun {
  let stopped = false;
  const phase = options.phase ?? 0;
  const root = new Random((seed + phase * 0x51ed27) >>> 0);
  const writers = cluster.nodes.map((n) => ({ writer: new WorkloadWriter(n.spec.id, root.fork(n.spec.id), record, phase), dbPath: n.spec.dbPath }));
  const done = Promise.all(
    writers.map(async ({ writer, dbPath }) => {
      const pauses = new Random((seed ^ writer.node ^ (phase << 8)) >>> 0);
      for (let i = 0; i < options.batches && !stopped; i++) {
        await writer.runBatch(dbPath);
        const pause = pauses.int((options.maxPauseMs ?? 20) + 1);
        if (pause > 0) await sleep(pause);
      }
    }),
  ).then(() => undefined);
  return { stop: () => (stopped = true), done };
}

/**
 * The SQL that prints, one line each, "<table>.<column>|<hex of quote(value)>" for every literal written into a
 * column, after the column's own affinity turned it into what the table really stores.
 */
function canonicalWrittenSql(record: WorkloadRecord): string {
  const lines: string[] = [];
  for (const table of TABLES) {
    for (const column of table.columns) {
      const literals = record.written.get(`${table.name}.${column.name}`);
      if (!literals || literals.size === 0) continue;
      const scratch = `"w_${table.name}_${column.name}"`;
      lines.push(`CREATE TABLE ${scratch} (v ${column.decl});`);
      for (const literal of literals) lines.push(`INSERT INTO ${scratch} VALUES (${literal});`);
      lines.push(`SELECT '${table.name}.${column.name}', hex(quote(v)) FROM ${scratch};`);
    }
  }
  return lines.join("\n");
}

async function canonicalWritten(record: WorkloadRecord): Promise<Map<string, Set<string>>> {
  const out = await sqlite3Async(":memory:", canonicalWrittenSql(record));
  const canonical = new Map<string, Set<string>>();
  for (const line of out.split("\n")) {
    if (line === "") continue;
    const [column, hex] = line.split("|") as [string, string];
    let set = canonical.get(column);
    if (!set) canonical.set(column, (set = new Set()));
    set.add(hex);
  }
  return canonical;
}

/**
 * What each node has applied and still holds back, for the message of a convergence failure: it tells a node that
 * lags or stalls from nodes that applied different streams.
 */
async function replicationState(cluster: TestCluster): Promise<string> {
  const pending = TABLES.map((t) => `(SELECT count(*) FROM ${quoteIdent(changeLogTable(t.name))} WHERE __marmot_op <> 'marker')`).join(" + ");
  const lines: string[] = [];
  const appliedByNode = new Set<string>();
  let idle = true;
  for (const n of cluster.nodes) {
    try {
      const out = await sqlite3Async(
        n.spec.dbPath,
        `SELECT (SELECT group_concat(stream || ' ' || seq, ', ') FROM (SELECT * FROM ${quoteIdent(APPLIED_TABLE)} ORDER BY stream)), ${pending}, ` +
          `(SELECT count(*) FROM ${quoteIdent(PARKED_TABLE)});`,
      );
      const [applied, unpublished, parked] = out.trim().split("|");
      appliedByNode.add(applied ?? "");
      if (unpublished !== "0" || parked !== "0" || !n.running) idle = false;
      lines.push(
        `node ${n.spec.id}${n.running ? "" : " (marmot not running)"}: applied ${applied}; unpublished changes ${unpublished}; parked ${parked}`,
      );
    } catch (err) {
      idle = false;
      lines.push(`node ${n.spec.id}: ${(err as Error).message}`);
    }
  }
  if (idle && appliedByNode.size === 1) {
    lines.push("every node published everything and applied the same messages, yet the rows differ: a capture or apply bug");
  } else if (idle) {
    lines.push(
      "every node published everything, yet they applied up to different sequences: a consumer stalled, or the replicas " +
        "of a stream differ (nats-server 2.9.10 can leave R3 stream replicas different after a network partition)",
    );
  }
  return lines.join("\n");
}

/** Every row of every workload table, each value as hex(quote(v)), in the same order on every node. */
async function dumpTables(dbPath: string): Promise<Map<string, string[][]>> {
  const dump = new Map<string, string[][]>();
  for (const table of TABLES) {
    const select = table.columns.map((c) => `hex(quote(${c.name}))`).join(", ");
    const rowid = table.name === "loose" ? "rowid, " : "";
    const out = await sqlite3Async(dbPath, `SELECT ${rowid}${select} FROM ${table.name} ORDER BY ${table.order};`);
    dump.set(
      table.name,
      out
        .split("\n")
        .filter((line) => line !== "")
        .map((line) => line.split("|")),
    );
  }
  return dump;
}

/** What table owned must hold on every node: each app's last committed state of its own rows, as hex(quote()). */
async function expectedOwned(record: WorkloadRecord): Promise<string[][]> {
  const inserts: string[] = [];
  for (const [node, rows] of record.owned) {
    for (const [k, v] of rows) inserts.push(`INSERT INTO m VALUES (${node}, ${k}, ${v});`);
  }
  const sql = `CREATE TABLE m (node INTEGER, k INTEGER, v);\n${inserts.join("\n")}\nSELECT hex(quote(node)), hex(quote(k)), hex(quote(v)) FROM m ORDER BY node, k;`;
  const out = await sqlite3Async(":memory:", sql);
  return out
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => line.split("|"));
}

function unhex(hex: string): string {
  return Buffer.from(hex, "hex").toString("utf8");
}

export interface VerifyOptions {
  /** how long the nodes may take to converge after the writers stopped */
  timeoutMs?: number;
}

/**
 * After the writers stopped: the nodes converge (sqldiff), hold exactly the same values with the same storage
 * classes (sqldiff compares 1 and 1.0 as equal), hold only values some writer wrote, and hold every journal row
 * whose batch committed and none whose batch rolled back. (Table owned is checked by verifyOwnedRows.)
 */
export async function verifyWorkload(cluster: TestCluster, record: WorkloadRecord, options: VerifyOptions = {}): Promise<string> {
  const started = Date.now();
  try {
    await cluster.waitConverged(WORKLOAD_TABLES, options.timeoutMs ?? 120_000);
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${await replicationState(cluster)}`, { cause: err });
  }
  const convergedMs = Date.now() - started;
  const canonical = await canonicalWritten(record);
  const dumps = await Promise.all(cluster.nodes.map((n) => dumpTables(n.spec.dbPath)));
  const first = dumps[0]!;
  for (let i = 1; i < dumps.length; i++) {
    for (const table of TABLES) {
      assert.deepEqual(
        dumps[i]!.get(table.name),
        first.get(table.name),
        `table ${table.name} on node ${i + 1} differs from node 1 in value or storage class`,
      );
    }
  }

  const strangers: string[] = [];
  for (const table of TABLES) {
    const offset = table.name === "loose" ? 1 : 0;
    for (const row of first.get(table.name)!) {
      table.columns.forEach((column, i) => {
        const cell = row[i + offset]!;
        if (!canonical.get(`${table.name}.${column.name}`)?.has(cell)) strangers.push(`${table.name}.${column.name} = ${unhex(cell)}`);
      });
    }
  }
  assert.deepEqual(strangers, [], "the final state holds values no writer wrote");

  const journalIds = (dumpIds: string[][]) => new Set(dumpIds.map((row) => Number(unhex(row[0]!))));
  for (const [i, dump] of dumps.entries()) {
    const ids = journalIds(dump.get("journal")!);
    const missing = [...record.committed].filter((id) => !ids.has(id));
    assert.deepEqual(missing, [], `node ${i + 1} lacks journal rows of committed batches`);
    const phantom = [...ids].filter((id) => record.rolledBack.has(id) || (!record.committed.has(id) && !record.uncertain.has(id)));
    assert.deepEqual(phantom, [], `node ${i + 1} holds journal rows of batches that never committed`);
  }
  const rows = TABLES.map((t) => `${t.name} ${first.get(t.name)!.length}`).join(", ");
  return `converged ${convergedMs} ms after the writers stopped; ${record.batches} batches (${record.committed.size} committed, ${record.rolledBack.size} rolled back, ${record.failures.length} failed); final rows: ${rows}`;
}

/**
 * Table owned, once the nodes converged: rows with a single writer, so no concurrency excuses any difference from
 * that writer's last commit. A lost or undone write of an app to its own rows shows here and nowhere else.
 */
export async function verifyOwnedRows(cluster: TestCluster, record: WorkloadRecord): Promise<void> {
  const certain = (row: string[]) => !record.ownedUncertain.has(Number(unhex(row[0]!)));
  const readable = (rows: string[][]) => rows.filter(certain).map((row) => row.map(unhex).join(" | "));
  const expected = readable(await expectedOwned(record));
  for (const n of cluster.nodes) {
    const actual = readable((await dumpTables(n.spec.dbPath)).get("owned")!);
    assert.deepEqual(actual, expected, `node ${n.spec.id}: the rows each app alone writes (node | k | v) are not as it last committed them`);
  }
}
