// What marmot knows about one user table: enough to capture, scan and apply its rows.

export interface ColumnInfo {
  name: string;
  /** declared type as written, "" when none */
  type: string;
  notNull: boolean;
  /** 1-based position in the primary key, 0 when not part of it */
  pkIndex: number;
}

export interface TableInfo {
  name: string;
  /** all columns in declaration order (hidden/generated columns excluded) */
  columns: ColumnInfo[];
  /**
   * Columns that identify a row on every node, in primary-key order.
   * For a table without a declared primary key this is [ROWID_KEY] ("rowid") and rowidKeyed is true.
   */
  keyColumns: string[];
  rowidKeyed: boolean;
  withoutRowid: boolean;
  /**
   * The table has a UNIQUE constraint or unique index besides its key: two rows with different keys can clash, so
   * all its rows share one shard (see shardOfRow). Absent: false.
   */
  uniqueBeyondKey?: boolean;
  /**
   * The columns of each UNIQUE constraint declared in CREATE TABLE (not the key). SQLite refuses to drop such a
   * column, so marmot's triggers may name them (see clashTriggers in trigger-sql.ts). Absent: none.
   */
  uniqueConstraints?: string[][];
}
