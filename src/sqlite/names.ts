// Names of everything marmot adds to a user's database; one place so install, scan, apply and cleanup agree.

/** Every table, trigger and index marmot creates starts with this; user tables may not. */
export const INTERNAL_PREFIX = "__marmot";

/** One row while marmot applies replicated changes; capture triggers skip writes made while it is there. */
export const APPLYING_TABLE = "__marmot__applying";
/** stream name -> last stream sequence applied, written in the same transaction as the apply. */
export const APPLIED_TABLE = "__marmot__applied";
/** key/value facts about this installation (install epoch, per-table capture signature). */
export const META_TABLE = "__marmot__meta";
/** The app's triggers marmot guarded, with their exact text, so that cleanup puts that text back (see user-triggers.ts). */
export const USER_TRIGGERS_TABLE = "__marmot__user_triggers";
/** Replicated changes this node could not apply (unknown table/column, undecodable), kept for retry and inspection. */
export const PARKED_TABLE = "__marmot__parked";

/** Columns of every change-log table besides the captured values. */
export const LOG_ID_COLUMN = "__marmot_id";
export const LOG_OP_COLUMN = "__marmot_op";
/**
 * LOG_OP_COLUMN of a change-log row that is not a change: it keeps the highest change id handed out while every
 * change below it has left the log, so that ids are never handed out twice (see keepLastTriggerName).
 */
export const LOG_MARKER_OP = "marker";
/** For tables without a declared primary key, the captured rowid. */
export const LOG_ROWID_COLUMN = "__marmot_rowid";
/** Name a rowid-keyed table's key travels under on the wire. */
export const ROWID_KEY = "rowid";

export function changeLogTable(table: string): string {
  return `${INTERNAL_PREFIX}__${table}_change_log`;
}

/**
 * The index of a change log on the row key: the applier asks, per replicated row, whether this node holds a local
 * change of that row that the stream has not sequenced yet.
 */
export function changeLogIndex(table: string): string {
  return `${changeLogTable(table)}_key`;
}

/**
 * The trigger on a change log that puts a LOG_MARKER_OP row in place of a deleted row with no row above it: the log
 * keeps its highest id, and SQLite hands out the next one after it (without the per-insert cost of AUTOINCREMENT).
 */
export function keepLastTriggerName(table: string): string {
  return `${changeLogTable(table)}_keep_last`;
}

/** The change-log column that holds the value of a user column. */
export function logValueColumn(column: string): string {
  return `v_${column}`;
}

export function triggerName(table: string, op: "insert" | "update" | "delete"): string {
  return `${INTERNAL_PREFIX}__${table}_${op}`;
}

/** The BEFORE trigger that logs the rows an INSERT or UPDATE OR REPLACE of `table` removes on a UNIQUE clash. */
export function clashTriggerName(table: string, op: "insert" | "update"): string {
  return `${INTERNAL_PREFIX}__${table}_clash_${op}`;
}

export function isInternalName(name: string): boolean {
  return name.startsWith(INTERNAL_PREFIX);
}

/**
 * The user schema as this node last published or applied it (type, name -> tbl_name, sql): a schema change is the
 * difference between it and sqlite_schema (see schema-state.ts).
 */
export const SCHEMA_TABLE = "__marmot__schema";
/** Schema messages this node made and has not seen come back from the schema stream (see schema-sync.ts). */
export const SCHEMA_OUTBOX_TABLE = "__marmot__schema_outbox";

/** Only in a snapshot file: key/value facts of the snapshot (streams and sequences it covers, format, config). */
export const SNAPSHOT_TABLE = "__marmot__snapshot";

/** The tables marmot creates besides the change logs. */
export const INTERNAL_TABLES: readonly string[] = [
  APPLYING_TABLE,
  APPLIED_TABLE,
  META_TABLE,
  PARKED_TABLE,
  SNAPSHOT_TABLE,
  USER_TRIGGERS_TABLE,
  SCHEMA_TABLE,
  SCHEMA_OUTBOX_TABLE,
];

const CHANGE_LOG_PREFIX = `${INTERNAL_PREFIX}__`;
const CHANGE_LOG_SUFFIX = "_change_log";

/** The user table whose change log is called `name`, or undefined when `name` is not a change-log name. */
export function changeLogOwner(name: string): string | undefined {
  if (name.length < CHANGE_LOG_PREFIX.length + CHANGE_LOG_SUFFIX.length) return undefined;
  if (!name.startsWith(CHANGE_LOG_PREFIX) || !name.endsWith(CHANGE_LOG_SUFFIX)) return undefined;
  return name.slice(CHANGE_LOG_PREFIX.length, name.length - CHANGE_LOG_SUFFIX.length);
}

/** True for the tables marmot itself creates: the internal tables and every change log. */
export function isMarmotTable(name: string): boolean {
  return INTERNAL_TABLES.includes(name) || changeLogOwner(name) !== undefined;
}

/** True for a name triggerName() produces (whatever the table). */
export function isCaptureTriggerName(name: string): boolean {
  return name.startsWith(CHANGE_LOG_PREFIX) && /_(insert|update|delete)$/.test(name);
}

/** META_TABLE key of the random id written at first install; it changes only after a cleanup. */
export const META_EPOCH_KEY = "epoch";
/**
 * META_TABLE key recording sqlite_sequence as marmot's first install found it: "absent", or its highest rowid
 * ("0" when it was empty), so cleanup can put it back as it would be without marmot.
 */
export const META_SEQUENCE_KEY = "sqlite_sequence_before_marmot";

/**
 * META_TABLE key of the highest change id a table's change log had handed out when marmot dropped that log; a log
 * created again for the table goes on from there. Change ids name messages (JetStream drops a message whose id it
 * saw in the last two minutes) and tell a node's own changes apart, so they must never be reused.
 */
export function lastChangeIdKey(table: string): string {
  return `last_change_id:${table}`;
}

/**
 * META_TABLE key of the highest sequence at which JetStream stored a message of this node in a stream, recorded
 * as the message's changes leave the change log: a start reads its own messages back only up to there.
 */
export function lastStoredSeqKey(stream: string): string {
  return `last_stored_seq:${stream}`;
}

/** META_TABLE key of a captured table's signature (JSON of its columns and key). */
export function captureSignatureKey(table: string): string {
  return `capture:${table}`;
}

/** Values of LOG_OP_COLUMN: the row now has these values / the row with this key is gone. */
export type ChangeOp = "upsert" | "delete";
export const OP_UPSERT: ChangeOp = "upsert";
export const OP_DELETE: ChangeOp = "delete";
