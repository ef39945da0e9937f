// Names of everything marmot adds to a user's database; one place so install, scan, apply and cleanup agree.

/** Every table, trigger and index marmot creates starts with this; user tables may not. */
export const INTERNAL_PREFIX = "__marmot";

/** One row while marmot applies replicated changes; capture triggers skip writes made while it is there. */
export const APPLYING_TABLE = "__marmot__applying";
/** stream name -> last stream sequence applied, written in the same transaction as the apply. */
export const APPLIED_TABLE = "__marmot__applied";
/** key/value facts about this installation (install epoch, per-table capture signature). */
export const META_TABLE = "__marmot__meta";
/** Replicated changes this node could not apply (unknown table/column, undecodable), kept for retry and inspection. */
export const PARKED_TABLE = "__marmot__parked";

/** Columns of every change-log table besides the captured values. */
export const LOG_ID_COLUMN = "__marmot_id";
export const LOG_OP_COLUMN = "__marmot_op";
/** For tables without a declared primary key, the captured rowid. */
export const LOG_ROWID_COLUMN = "__marmot_rowid";
/** Name a rowid-keyed table's key travels under on the wire. */
export const ROWID_KEY = "rowid";

export function changeLogTable(table: string): string {
  return `${INTERNAL_PREFIX}__${table}_change_log`;
}

/** The change-log column that holds the value of a user column. */
export function logValueColumn(column: string): string {
  return `v_${column}`;
}

export function triggerName(table: string, op: "insert" | "update" | "delete"): string {
  return `${INTERNAL_PREFIX}__${table}_${op}`;
}

export function isInternalName(name: string): boolean {
  return name.startsWith(INTERNAL_PREFIX);
}
