// SQL identifier quoting: every generated statement names tables and columns only through this.

/** Quote an identifier for SQLite: wrapped in double quotes, inner quotes doubled. */
export function quoteIdent(name: string): string {
  if (name.includes("\u0000")) throw new Error(`identifier contains a NUL character: ${JSON.stringify(name)}`);
  return `"${name.replaceAll('"', '""')}"`;
}

/** Quote a string literal (only for names inside DDL, never for values, which are always bound). */
export function quoteLiteral(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}
