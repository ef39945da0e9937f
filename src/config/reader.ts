// Reads typed values out of a parsed TOML table, collecting every problem so the user sees them all at once.

import type { TomlTable, TomlValue } from "smol-toml";

/** Everything wrong with one config file, plus the harmless oddities worth a warning. */
export class Problems {
  readonly errors: string[] = [];
  readonly warnings: string[] = [];
  private readonly readers: TableReader[] = [];

  constructor(readonly file: string) {}

  error(key: string, text: string): void {
    this.errors.push(`${this.file}: ${key} ${text}`);
  }

  track(reader: TableReader): void {
    this.readers.push(reader);
  }

  /** Run after every key has been read: whatever was not read is unknown to marmot. */
  warnUnknownKeys(): void {
    for (const reader of this.readers) {
      for (const key of reader.unreadKeys()) {
        this.warnings.push(`unknown key ${key} in ${this.file} (ignored)`);
      }
    }
  }
}

function isTable(value: TomlValue): value is TomlTable {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/** How a TOML value looks in an error message: its TOML type and, for scalars, the value. */
export function describe(value: TomlValue): string {
  if (typeof value === "string") return `string ${JSON.stringify(value)}`;
  if (typeof value === "bigint") return `integer ${value}`;
  if (typeof value === "number") return `float ${value}`;
  if (typeof value === "boolean") return `boolean ${value}`;
  if (value instanceof Date) return `date-time ${value.toISOString()}`;
  if (Array.isArray(value)) return "an array";
  if (isTable(value)) return "a table";
  return String(value);
}

export class TableReader {
  private readonly read = new Set<string>();

  constructor(
    private readonly table: TomlTable,
    private readonly prefix: string,
    private readonly problems: Problems,
  ) {
    problems.track(this);
  }

  /** The full dotted name of a key, as the user would search for it in the file. */
  keyName(key: string): string {
    return this.prefix === "" ? key : `${this.prefix}.${key}`;
  }

  has(key: string): boolean {
    return Object.hasOwn(this.table, key);
  }

  /** The raw value, marking the key as known. */
  value(key: string): TomlValue | undefined {
    this.read.add(key);
    return this.has(key) ? this.table[key] : undefined;
  }

  fail(key: string, text: string): void {
    this.problems.error(this.keyName(key), text);
  }

  section(key: string): TableReader {
    const value = this.value(key);
    if (value === undefined) return new TableReader({}, this.keyName(key), this.problems);
    if (!isTable(value)) {
      this.fail(key, `must be a table ([${this.keyName(key)}]), got ${describe(value)}`);
      return new TableReader({}, this.keyName(key), this.problems);
    }
    return new TableReader(value, this.keyName(key), this.problems);
  }

  boolean(key: string, fallback: boolean): boolean {
    const value = this.value(key);
    if (value === undefined) return fallback;
    if (typeof value === "boolean") return value;
    this.fail(key, `must be a boolean (true or false), got ${describe(value)}`);
    return fallback;
  }

  /** Integers come from the parser as bigint, so a float such as 1.5 is told apart from 1. */
  integer(key: string, fallback: number, min: number, max: number, unit = ""): number {
    const value = this.value(key);
    if (value === undefined) return fallback;
    const rule = `must be an integer from ${min} to ${max}${unit === "" ? "" : ` (${unit})`}`;
    if (typeof value !== "bigint") {
      this.fail(key, `${rule}, got ${describe(value)}`);
      return fallback;
    }
    if (value < BigInt(min) || value > BigInt(max)) {
      this.fail(key, `${rule}, got ${value}`);
      return fallback;
    }
    return Number(value);
  }

  /** `check` returns why a value is unacceptable, or undefined when it is fine. */
  string(key: string, fallback: string, check?: (value: string) => string | undefined): string {
    const value = this.value(key);
    if (value === undefined) return fallback;
    if (typeof value !== "string") {
      this.fail(key, `must be a string, got ${describe(value)}`);
      return fallback;
    }
    const reason = check?.(value);
    if (reason !== undefined) {
      this.fail(key, `${reason}, got ${JSON.stringify(value)}`);
      return fallback;
    }
    return value;
  }

  choice<T extends string>(key: string, fallback: T, allowed: readonly T[]): T {
    const rule = `must be one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}`;
    const value = this.string(key, fallback, (text) => ((allowed as readonly string[]).includes(text) ? undefined : rule));
    return value as T;
  }

  stringList(key: string, fallback: string[], check?: (value: string) => string | undefined): string[] {
    const value = this.value(key);
    if (value === undefined) return fallback;
    if (!Array.isArray(value)) {
      this.fail(key, `must be an array of strings (e.g. ["nats://localhost:4222"]), got ${describe(value)}`);
      return fallback;
    }
    const items: string[] = [];
    value.forEach((item, index) => {
      if (typeof item !== "string") {
        this.fail(`${key}[${index}]`, `must be a string, got ${describe(item)}`);
        return;
      }
      const reason = check?.(item);
      if (reason !== undefined) {
        this.fail(`${key}[${index}]`, `${reason}, got ${JSON.stringify(item)}`);
        return;
      }
      items.push(item);
    });
    return items;
  }

  unreadKeys(): string[] {
    return Object.keys(this.table)
      .filter((key) => !this.read.has(key))
      .map((key) => this.keyName(key));
  }
}
