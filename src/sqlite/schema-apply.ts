// Makes this database's objects equal to a schema message's definitions, with SQLite's exact text, keeping rows.

import type Database from "better-sqlite3";
import type { Logger } from "../log.js";
import { tablePlan } from "../snapshot/restore-schema.js";
import type { SchemaChange } from "../wire/schema-message.js";
import { INTERNAL_PREFIX } from "./names.js";
import { quoteIdent } from "./quote.js";
import { foldCase } from "./schema.js";
import { appTriggerTexts, objectKey } from "./schema-state.js";
import { sqlTokens } from "./user-triggers.js";

interface LocalObject {
  type: string;
  name: string;
  tblName: string;
  sql: string | null;
}

/** Dropped before tables, created after them: what depends on a table goes first and comes back last. */
const DEPENDENTS = ["trigger", "view", "index"] as const;

/** Main's objects; `appSql` is a guarded trigger's text as the app made it, which is what messages carry. */
function localObjects(db: Database.Database): Map<string, LocalObject & { appSql: string | null }> {
  const rows = db.prepare("SELECT type, name, tbl_name AS tblName, sql FROM main.sqlite_master").all() as LocalObject[];
  const appText = appTriggerTexts(db);
  return new Map(rows.map((row) => [objectKey(row.type, row.name), { ...row, appSql: appText.get(row.sql ?? "") ?? row.sql }]));
}

const isVirtual = (sql: string | null): boolean => /^\s*CREATE\s+VIRTUAL\s/i.test(sql ?? "");

/**
 * Apply `changes` inside the caller's transaction. An object whose local definition already equals the message's
 * is left alone; an index, view or trigger is dropped and created again; a table defined otherwise is rebuilt to
 * the exact text (see rebuildTable). Each object is its own savepoint: one that SQLite refuses (its table is
 * missing here, say) is logged and skipped, and the others still apply. Returns how many objects changed here.
 */
export function applySchemaChanges(db: Database.Database, changes: readonly SchemaChange[], logger: Logger): number {
  let local = localObjects(db);
  let changed = 0;
  const attempt = (change: SchemaChange, what: string, work: () => void): void => {
    try {
      db.transaction(work)();
      changed++;
    } catch (err) {
      if (!(err as { code?: string }).code?.startsWith("SQLITE_")) throw err;
      logger.error("could not apply a schema change from another node; this node's schema differs until that object changes again", {
        object: change.name,
        type: change.type,
        step: what,
        reason: (err as Error).message,
      });
    }
  };
  const current = (change: SchemaChange) => local.get(objectKey(change.type, change.name));

  for (const type of DEPENDENTS) {
    for (const change of changes.filter((c) => c.type === type)) {
      const here = current(change);
      if (here === undefined || here.appSql === change.sql) continue;
      attempt(change, "drop", () => db.exec(`DROP ${type.toUpperCase()} IF EXISTS main.${quoteIdent(here.name)}`));
    }
  }
  for (const change of changes.filter((c) => c.type === "table")) {
    const here = current(change);
    if (here?.sql === change.sql) continue;
    if (change.sql === null) {
      if (here !== undefined) attempt(change, "drop", () => db.exec(`DROP TABLE IF EXISTS main.${quoteIdent(here.name)}`));
    } else if (here === undefined) {
      attempt(change, "create", () => db.exec(change.sql!));
    } else if (isVirtual(here.sql) || isVirtual(change.sql)) {
      attempt(change, "create again", () => {
        db.exec(`DROP TABLE main.${quoteIdent(here.name)}`);
        db.exec(change.sql!);
      });
    } else if (isColumnAppend(here.sql ?? "", change.sql) && addColumn(db, here.name, here.sql!, change.sql)) {
      changed++;
    } else {
      const definedInMessage = new Set(changes.map((c) => objectKey(c.type, c.name)));
      const keep = [...local.values()].filter(
        (o) =>
          (o.type === "index" || o.type === "trigger") &&
          o.sql !== null &&
          foldCase(o.tblName) === foldCase(here.name) &&
          !o.name.startsWith(INTERNAL_PREFIX) &&
          !definedInMessage.has(objectKey(o.type, o.name)),
      );
      attempt(change, "rebuild", () => rebuildTable(db, here.name, here.sql ?? "", change.sql!, keep));
    }
  }
  local = localObjects(db);
  for (const type of ["index", "view", "trigger"] as const) {
    for (const change of changes.filter((c) => c.type === type && c.sql !== null)) {
      // A trigger is created with the app's text; capture guards it in the same transaction.
      if (current(change)?.appSql === change.sql) continue;
      attempt(change, "create", () => db.exec(change.sql!));
    }
  }
  return changed;
}

/**
 * Whether `after` is `before` with column definitions added at its end, as ALTER TABLE ADD COLUMN writes it: the
 * rows keep their values and the new column holds its constant default on every node.
 */
export function isColumnAppend(before: string, after: string): boolean {
  const close = before.lastIndexOf(")");
  if (close < 0) return false;
  return after.length > before.length && after.startsWith(`${before.slice(0, close)}, `) && after.endsWith(before.slice(close));
}

/**
 * A column added at the end the way the origin added it, ALTER TABLE ADD COLUMN, without copying the table: true
 * when SQLite then holds exactly `sql` (a savepoint undoes it otherwise, and the caller rebuilds the table).
 */
function addColumn(db: Database.Database, name: string, oldSql: string, sql: string): boolean {
  const close = oldSql.lastIndexOf(")");
  const definition = sql.slice(close + 2, sql.length - (oldSql.length - close));
  try {
    db.transaction(() => {
      db.exec(`ALTER TABLE main.${quoteIdent(name)} ADD COLUMN ${definition}`);
      const now = db.prepare("SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?").pluck(true).get(name);
      if (now !== sql) throw new Error("ADD COLUMN gave other text");
    })();
    return true;
  } catch {
    return false;
  }
}

/** A quoted name's text without its quotes. */
function unquoted(text: string): string {
  const first = text[0];
  if (first === "[") return text.slice(1, -1);
  if (first === '"' || first === "`") return text.slice(1, -1).split(`${first}${first}`).join(first);
  return text;
}

/**
 * The columns ALTER TABLE RENAME COLUMN renamed between two definitions of a table (new name folded -> old name):
 * SQLite rewrites only the name where it appears, so the two texts differ in names alone, consistently. Undefined
 * when they differ in anything else (then columns are matched by name, and a table made again is sent whole by its
 * origin: see capture's relogging).
 */
export function renamedColumns(
  before: string,
  after: string,
  oldColumns: readonly string[],
  newColumns: readonly string[],
): Map<string, string> | undefined {
  const wasColumn = new Set(oldColumns.map(foldCase));
  const isColumn = new Set(newColumns.map(foldCase));
  const a = sqlTokens(before);
  const b = sqlTokens(after);
  if (a.length !== b.length) return undefined;
  const renames = new Map<string, string>();
  for (let i = 0; i < a.length; i++) {
    const [x, y] = [a[i]!, b[i]!];
    if (x.text === y.text) continue;
    const isName = (kind: string) => kind === "word" || kind === "name";
    if (!isName(x.kind) || !isName(y.kind)) return undefined;
    const [from, to] = [unquoted(x.text), unquoted(y.text)];
    if (foldCase(from) === foldCase(to)) continue;
    if (!wasColumn.has(foldCase(from)) || !isColumn.has(foldCase(to))) return undefined;
    const known = renames.get(foldCase(to));
    if (known !== undefined && foldCase(known) !== foldCase(from)) return undefined;
    renames.set(foldCase(to), from);
  }
  return renames;
}

/**
 * Rebuild a table to `sql`, SQLite's recommended way: the old table is renamed away (legacy_alter_table on, so no
 * view or trigger elsewhere is rewritten to follow it), the new one created with the exact text, the columns both
 * have copied (by their old names when the change renamed columns; and the rowid, which keys rows of tables without
 * a primary key on every node), the old one dropped, and its own indexes and triggers that the message does not
 * define created again. Rows the copy cannot take (a new NOT NULL or CHECK) are left out: a table its origin made
 * again is sent whole by it anyway.
 */
function rebuildTable(db: Database.Database, name: string, oldSql: string, sql: string, keep: readonly LocalObject[]): void {
  const aside = `${INTERNAL_PREFIX}__rebuild_${name}`;
  const legacy = Number(db.pragma("legacy_alter_table", { simple: true }));
  db.pragma("legacy_alter_table = ON");
  try {
    db.exec(`DROP TABLE IF EXISTS main.${quoteIdent(aside)}`);
    db.exec(`ALTER TABLE main.${quoteIdent(name)} RENAME TO ${quoteIdent(aside)}`);
    db.exec(sql);
    const from = tablePlan(db, "main", aside);
    const to = tablePlan(db, "main", name);
    const theirs = new Map(from.columns.map((c) => [foldCase(c), c]));
    const renames = renamedColumns(oldSql, sql, from.columns, to.columns) ?? new Map<string, string>();
    const sourceOf = (c: string) => theirs.get(foldCase(renames.get(foldCase(c)) ?? c));
    const common = to.columns.filter((c) => sourceOf(c) !== undefined);
    const target = common.map(quoteIdent);
    const source = common.map((c) => quoteIdent(sourceOf(c)!));
    if (to.rowid !== undefined && !to.rowidIsColumn && from.rowid !== undefined) {
      target.unshift(quoteIdent(to.rowid));
      source.unshift(quoteIdent(from.rowid));
    }
    if (target.length > 0) {
      db.exec(`INSERT OR IGNORE INTO main.${quoteIdent(name)} (${target.join(", ")}) SELECT ${source.join(", ")} FROM main.${quoteIdent(aside)}`);
    }
    db.exec(`DROP TABLE main.${quoteIdent(aside)}`);
  } finally {
    db.pragma(`legacy_alter_table = ${legacy ? "ON" : "OFF"}`);
  }
  for (const object of keep) db.exec(object.sql!);
}
