// The Logger implementation: pino writing synchronously to stderr, as JSON lines or as lines a person reads.

import pino from "pino";
import type { LogFields, Logger } from "./log.js";

export interface LoggerOptions {
  format: "console" | "json";
  verbose: boolean;
}

type Destination = { write(line: string): unknown };

/** An error's message with its causes, so "connect failed: ECONNREFUSED" reads as one line. */
function errorText(error: Error): string {
  let text = error.message || error.name;
  let cause: unknown = error.cause;
  for (let depth = 0; cause !== undefined && depth < 5; depth++) {
    text += `: ${cause instanceof Error ? cause.message : String(cause)}`;
    cause = cause instanceof Error ? cause.cause : undefined;
  }
  return text;
}

/**
 * JSON cannot carry an Error (it becomes {}) or a bigint (pino writes it as a number that loses digits),
 * so both are turned into strings before pino sees them; JSON lines keep the stack for the record.
 */
function normalize(fields: LogFields, format: LoggerOptions["format"]): LogFields {
  const out: LogFields = {};
  for (const [key, value] of Object.entries(fields)) {
    if (value instanceof Error) {
      out[key] = format === "json" ? { type: value.name, message: errorText(value), stack: value.stack } : errorText(value);
    } else if (typeof value === "bigint") {
      out[key] = value.toString();
    } else {
      out[key] = value;
    }
  }
  return out;
}

/** A value in a console line: bare when unambiguous, quoted when it has spaces, quotes or "=". */
function consoleValue(value: unknown): string {
  if (typeof value === "string") return value === "" || /[\s"=]/.test(value) ? JSON.stringify(value) : value;
  if (value === null || typeof value !== "object") return String(value);
  return JSON.stringify(value);
}

/** Rewrites one pino JSON line as "TIME LEVEL message key=value ...", with component first. */
export function formatConsoleLine(jsonLine: string): string {
  const { time, level, msg, ...fields } = JSON.parse(jsonLine) as Record<string, unknown>;
  const parts = [String(time), String(level).toUpperCase().padEnd(5), String(msg ?? "")];
  const keys = Object.keys(fields);
  const ordered = keys.includes("component") ? ["component", ...keys.filter((k) => k !== "component")] : keys;
  for (const key of ordered) parts.push(`${key}=${consoleValue(fields[key])}`);
  return parts.join(" ") + "\n";
}

class PinoBackedLogger implements Logger {
  constructor(
    private readonly pino: pino.Logger,
    private readonly format: LoggerOptions["format"],
  ) {}

  private log(level: "debug" | "info" | "warn" | "error", message: string, fields?: LogFields): void {
    if (fields === undefined) this.pino[level](message);
    else this.pino[level](normalize(fields, this.format), message);
  }

  debug(message: string, fields?: LogFields): void {
    this.log("debug", message, fields);
  }
  info(message: string, fields?: LogFields): void {
    this.log("info", message, fields);
  }
  warn(message: string, fields?: LogFields): void {
    this.log("warn", message, fields);
  }
  error(message: string, fields?: LogFields): void {
    this.log("error", message, fields);
  }
  child(fields: LogFields): Logger {
    return new PinoBackedLogger(this.pino.child(normalize(fields, this.format)), this.format);
  }
}

/**
 * Writes to stderr unless given a destination. The default destination is synchronous so that the
 * last lines before an exit (often the reason for it) are not lost in a buffer.
 */
export function createLogger(options: LoggerOptions, destination?: NodeJS.WritableStream | { write(s: string): void }): Logger {
  const target: Destination = destination ?? pino.destination({ fd: 2, sync: true });
  const stream: Destination = options.format === "console" ? { write: (line: string) => target.write(formatConsoleLine(line)) } : target;
  const logger = pino(
    {
      level: options.verbose ? "debug" : "info",
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    stream as pino.DestinationStream,
  );
  return new PinoBackedLogger(logger, options.format);
}
