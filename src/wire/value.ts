// The values SQLite can hold, as marmot carries them: INTEGER is always a bigint so 64-bit values stay exact.

export type SqlValue = null | bigint | number | string | Uint8Array;

/** SQLite's storage class of a value as read with safe integers (better-sqlite3 returns Buffers for BLOBs). */
export function storageClass(value: SqlValue): "null" | "integer" | "real" | "text" | "blob" {
  if (value === null) return "null";
  switch (typeof value) {
    case "bigint":
      return "integer";
    case "number":
      return "real";
    case "string":
      return "text";
    default:
      return "blob";
  }
}
