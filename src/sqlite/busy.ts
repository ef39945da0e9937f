// Marmot never makes its one thread wait for the app's write lock: a statement that finds the database locked fails
// at once with SQLITE_BUSY and is tried again later, while consuming, shipping and the metrics endpoint go on.

import type { Database } from "better-sqlite3";
import type { Logger } from "../log.js";
import { sleep } from "../sleep.js";

/**
 * How long a statement of marmot's may block the event loop waiting for a lock (SQLite's own busy handler sleeps in
 * the calling thread). An app's write transaction can hold the lock for seconds; those waits happen in withWriteLock.
 */
export const FAIL_FAST_BUSY_TIMEOUT_MS = 5;

/** After this long without the lock, say once what marmot is waiting for. */
const REPORT_AFTER_MS = 1000;
const FIRST_RETRY_MS = 2;
const MAX_RETRY_MS = 50;

/** Make statements on `db` fail fast with SQLITE_BUSY instead of blocking the thread while the app writes. */
export function failFastWhenBusy(db: Database): void {
  db.pragma(`busy_timeout = ${FAIL_FAST_BUSY_TIMEOUT_MS}`);
}

/** SQLITE_BUSY and its extended codes (SQLITE_BUSY_RECOVERY, SQLITE_BUSY_SNAPSHOT, ...). */
export function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("SQLITE_BUSY");
}

/**
 * Run `work` (synchronous database work that writes, rolled back entirely when it throws) until it does not find
 * the database locked: between tries, wait with a growing pause without blocking the event loop. Other errors are
 * thrown as they are; an abort rejects with the signal's reason. `what` names the work in the one log line a long
 * wait gets.
 */
export async function withWriteLock<T>(work: () => T, what: string, logger: Logger, signal?: AbortSignal): Promise<T> {
  let pause = FIRST_RETRY_MS;
  let started = 0;
  let reported = false;
  for (;;) {
    try {
      const result = work();
      if (reported) logger.info("got the database's write lock", { for: what, waited_ms: Date.now() - started });
      return result;
    } catch (err) {
      if (!isBusy(err)) throw err;
    }
    const now = Date.now();
    if (started === 0) started = now;
    if (!reported && now - started >= REPORT_AFTER_MS) {
      reported = true;
      logger.info("waiting for another connection (the app) to release the database's write lock", { for: what });
    }
    await sleep(pause, signal);
    pause = Math.min(pause * 2, MAX_RETRY_MS);
  }
}
