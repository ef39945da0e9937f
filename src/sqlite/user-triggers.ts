// The app's own triggers fire on the node where the app writes, never again when marmot applies the replicated
// rows: marmot adds its loop guard to each while it manages the database, and puts the exact text back at cleanup.
//
// Why: a trigger's effect (an audit row, say) is itself a captured write and travels; firing it again on every other
// node would add rows that exist on that node only. SQLite has no per-connection switch for triggers, so the
// trigger's WHEN clause asks for marmot's applying marker, which only marmot's apply transaction ever holds.
// A trigger that writes into a table marmot does not replicate (an FTS index kept by triggers, an excluded table)
// must fire on every node, so it is left as it is.

import type Database from "better-sqlite3";
import { APPLYING_TABLE, isInternalName, USER_TRIGGERS_TABLE } from "./names.js";
import { quoteIdent } from "./quote.js";

/** The condition added to every user trigger (and the capture triggers'): false while marmot applies. */
export const NOT_APPLYING = `NOT EXISTS (SELECT 1 FROM ${quoteIdent(APPLYING_TABLE)})`;

const CREATE_TABLE_SQL = `CREATE TABLE IF NOT EXISTS ${quoteIdent(USER_TRIGGERS_TABLE)} (name TEXT PRIMARY KEY, sql TEXT NOT NULL, guarded TEXT NOT NULL)`;

interface Token {
  /** "word" (a keyword or bare name), "name" (a quoted name), "string", "punct" */
  kind: "word" | "name" | "string" | "punct";
  text: string;
  start: number;
  end: number;
}

/** SQL tokens, comments and whitespace left out; quotes ('', "", ``, []) and comments (--, /* *\/) respected. */
export function sqlTokens(sql: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < sql.length) {
    const c = sql[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === "-" && sql[i + 1] === "-") {
      const eol = sql.indexOf("\n", i);
      i = eol < 0 ? sql.length : eol + 1;
    } else if (c === "/" && sql[i + 1] === "*") {
      const close = sql.indexOf("*/", i + 2);
      i = close < 0 ? sql.length : close + 2;
    } else if (c === "'" || c === '"' || c === "`") {
      let j = i + 1;
      // A doubled quote character is one quote inside the text.
      while (j < sql.length && !(sql[j] === c && sql[j + 1] !== c)) j += sql[j] === c ? 2 : 1;
      tokens.push({ kind: c === "'" ? "string" : "name", text: sql.slice(i, j + 1), start: i, end: j + 1 });
      i = j + 1;
    } else if (c === "[") {
      const close = sql.indexOf("]", i);
      const end = close < 0 ? sql.length : close + 1;
      tokens.push({ kind: "name", text: sql.slice(i, end), start: i, end });
      i = end;
    } else if (/[A-Za-z0-9_$\u0080-\uffff]/.test(c)) {
      let j = i + 1;
      while (j < sql.length && /[A-Za-z0-9_$\u0080-\uffff]/.test(sql[j]!)) j++;
      tokens.push({ kind: "word", text: sql.slice(i, j), start: i, end: j });
      i = j;
    } else {
      tokens.push({ kind: "punct", text: c, start: i, end: i + 1 });
      i++;
    }
  }
  return tokens;
}

const isWord = (token: Token | undefined, word: string): boolean => token?.kind === "word" && token.text.toUpperCase() === word;

/**
 * The CREATE TRIGGER text with marmot's guard: `WHEN NOT EXISTS (...)` before BEGIN, or `WHEN (<its own>) AND NOT
 * EXISTS (...)` when it has a WHEN clause. Undefined when the text cannot be read as a trigger (left as it is).
 */
export function guardedTriggerSql(sql: string): string | undefined {
  const tokens = sqlTokens(sql);
  // CREATE [TEMP] TRIGGER [IF NOT EXISTS] name [BEFORE|AFTER|INSTEAD OF] event [OF cols] ON table [FOR EACH ROW] [WHEN expr] BEGIN
  const on = tokens.findIndex((t, i) => i > 1 && isWord(t, "ON"));
  if (on < 0) return undefined;
  let i = on + 2; // the table's name
  if (tokens[i]?.text === ".") i += 2; // schema.table
  if (isWord(tokens[i], "FOR") && isWord(tokens[i + 1], "EACH") && isWord(tokens[i + 2], "ROW")) i += 3;
  if (isWord(tokens[i], "WHEN")) {
    const when = tokens[i]!;
    let depth = 0;
    let j = i + 1;
    for (; j < tokens.length; j++) {
      const t = tokens[j]!;
      if (t.text === "(") depth++;
      else if (t.text === ")") depth--;
      else if (depth === 0 && isWord(t, "BEGIN")) break;
    }
    if (j >= tokens.length || j === i + 1) return undefined;
    const first = tokens[i + 1]!;
    const last = tokens[j - 1]!;
    return `${sql.slice(0, when.end)} (${sql.slice(first.start, last.end)}) AND ${NOT_APPLYING}${sql.slice(last.end)}`;
  }
  if (!isWord(tokens[i], "BEGIN")) return undefined;
  const begin = tokens[i]!;
  return `${sql.slice(0, begin.start)}WHEN ${NOT_APPLYING} ${sql.slice(begin.start)}`;
}

/**
 * The tables a trigger's body writes into (INSERT/REPLACE INTO, UPDATE, DELETE FROM), as written (quotes kept off);
 * undefined when the text cannot be read.
 */
export function triggerTargets(sql: string): string[] | undefined {
  const tokens = sqlTokens(sql);
  const begin = tokens.findIndex((t, i) => i > 3 && isWord(t, "BEGIN") && beforeBodyEnds(tokens, i));
  if (begin < 0) return undefined;
  const targets: string[] = [];
  const nameAt = (i: number): number => (tokens[i + 1]?.text === "." ? i + 2 : i);
  for (let i = begin + 1; i < tokens.length; i++) {
    let at = -1;
    if (isWord(tokens[i], "INTO") && (isWord(tokens[i - 1], "INSERT") || isWord(tokens[i - 1], "REPLACE") || isWord(tokens[i - 2], "OR"))) at = i + 1;
    else if (isWord(tokens[i], "FROM") && isWord(tokens[i - 1], "DELETE")) at = i + 1;
    else if (isWord(tokens[i], "UPDATE") && !isWord(tokens[i - 1], "DO")) at = isWord(tokens[i + 1], "OR") ? i + 3 : i + 1;
    if (at < 0 || tokens[at] === undefined) continue;
    const name = tokens[nameAt(at)];
    if (name !== undefined && (name.kind === "word" || name.kind === "name")) targets.push(unquote(name.text));
  }
  return targets;
}

/** The BEGIN that opens the body: the guard's parser found the same one (its WHEN clause, if any, ends there). */
function beforeBodyEnds(tokens: Token[], i: number): boolean {
  let depth = 0;
  for (let j = 0; j < i; j++) {
    if (tokens[j]!.text === "(") depth++;
    else if (tokens[j]!.text === ")") depth--;
  }
  return depth === 0 && tokens.slice(0, i).some((t) => isWord(t, "ON"));
}

function unquote(text: string): string {
  const first = text[0];
  if (first === '"' || first === "`") return text.slice(1, -1).replaceAll(first + first, first);
  if (first === "[") return text.slice(1, -1);
  return text;
}

interface TriggerRow {
  name: string;
  tbl_name: string;
  sql: string | null;
}

interface KeptTrigger {
  name: string;
  sql: string;
  guarded: string;
}

/**
 * Guard every user trigger that is not guarded yet, keeping its exact text (as sqlite_schema holds it) in
 * USER_TRIGGERS_TABLE; forget kept texts of triggers the app dropped or replaced. Call inside a write transaction.
 * Returns the names of the triggers guarded now.
 */
export function guardUserTriggers(db: Database.Database, replicated: (table: string) => boolean): string[] {
  db.exec(CREATE_TABLE_SQL);
  const kept = new Map(
    (db.prepare(`SELECT name, sql, guarded FROM ${quoteIdent(USER_TRIGGERS_TABLE)}`).all() as KeptTrigger[]).map((k) => [k.name, k]),
  );
  const triggers = userTriggers(db);
  const forget = db.prepare(`DELETE FROM ${quoteIdent(USER_TRIGGERS_TABLE)} WHERE name = ?`);
  const current = new Set(triggers.map((t) => t.name));
  for (const name of kept.keys()) if (!current.has(name)) forget.run(name);
  const remember = db.prepare(
    `INSERT INTO ${quoteIdent(USER_TRIGGERS_TABLE)} (name, sql, guarded) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET sql = excluded.sql, guarded = excluded.guarded`,
  );
  const guardedNow: string[] = [];
  for (const trigger of triggers) {
    const sql = trigger.sql!;
    const keptText = kept.get(trigger.name);
    const targets = triggerTargets(keptText?.guarded === sql ? keptText.sql : sql);
    const guardIt = targets !== undefined && targets.every(replicated);
    // Guarded by marmot already: its text is the guarded form of the kept one (a trigger the app made again differs).
    if (keptText?.guarded === sql) {
      if (!guardIt) {
        // It now writes into a table marmot does not replicate (excluded since): the app's text again.
        db.exec(`DROP TRIGGER ${quoteIdent(trigger.name)}`);
        db.exec(keptText.sql);
        forget.run(trigger.name);
      }
      continue;
    }
    if (!guardIt) continue;
    const guarded = guardedTriggerSql(sql);
    if (guarded === undefined) continue;
    db.exec(`DROP TRIGGER ${quoteIdent(trigger.name)}`);
    db.exec(guarded);
    // SQLite keeps the text as it was given; read it back so the comparison above holds next time.
    const stored = db.prepare("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?").pluck(true).get(trigger.name) as string;
    remember.run(trigger.name, sql, stored);
    guardedNow.push(trigger.name);
  }
  return guardedNow;
}

/**
 * Put every guarded user trigger back exactly as the app made it (byte for byte in sqlite_schema), and drop
 * USER_TRIGGERS_TABLE. A trigger the app replaced since is left as the app made it. Returns the names put back.
 */
export function restoreUserTriggers(db: Database.Database): string[] {
  const exists = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(USER_TRIGGERS_TABLE);
  if (exists === undefined) return [];
  const kept = db.prepare(`SELECT name, sql, guarded FROM ${quoteIdent(USER_TRIGGERS_TABLE)}`).all() as KeptTrigger[];
  const restored: string[] = [];
  for (const trigger of kept) {
    const current = db.prepare("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?").pluck(true).get(trigger.name);
    if (current !== trigger.guarded) continue;
    db.exec(`DROP TRIGGER ${quoteIdent(trigger.name)}`);
    db.exec(trigger.sql);
    restored.push(trigger.name);
  }
  db.exec(`DROP TABLE ${quoteIdent(USER_TRIGGERS_TABLE)}`);
  return restored;
}

/** The app's triggers: neither marmot's own nor on marmot's tables. */
function userTriggers(db: Database.Database): TriggerRow[] {
  const rows = db.prepare("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name").all() as TriggerRow[];
  return rows.filter((row) => row.sql !== null && !isInternalName(row.name) && !isInternalName(row.tbl_name));
}
