// Notices writes to the database within milliseconds: watches the db and -wal files, looks again shortly after each
// file event until the commit shows, with a timer as the fallback.

import { watch, type FSWatcher } from "node:fs";
import { basename, dirname } from "node:path";
import type { Database, Statement } from "better-sqlite3";
import type { Logger } from "../log.js";

export interface DatabaseWatcherOptions {
  dbPath: string;
  /** polling_interval in ms; 0 means watching only, plus a slow safety poll */
  pollingInterval: number;
  onChange: () => void;
  /**
   * A cheap check whether another connection committed since the last call (see commitWatch). With it, each file
   * event is followed by a few quick looks, and onChange runs when one of them sees a commit.
   */
  committedElsewhere?: () => boolean;
  /** Whether marmot's own connection wrote since the last call (see ownWrites): its file events need no quick looks. */
  wroteHere?: () => boolean;
}

/** Without polling configured, still look once a second: a missed file event must not strand a change. */
const SAFETY_POLL_MS = 1000;

/**
 * Pauses between the looks after a file event, about 0.25 s in all. The event comes when the app writes its WAL
 * frames; at synchronous = FULL the commit becomes visible only after the fsync that follows, when SQLite updates
 * the wal-index in the -shm file (a memory mapping: no file event). Without these looks the commit waited for the
 * app's next write or the safety poll (bench/commit-visibility.ts measures it).
 */
const FOLLOW_UP_MS = [1, 1, 2, 4, 8, 16, 32, 64, 128];

/**
 * Before the first follow-up, a look at every turn of the event loop for up to this long: the fsync that makes an
 * app's commit visible takes about half a millisecond here, and a timer cannot fire sooner than 1 ms. The loop
 * spins meanwhile, so such a spell starts at most once every QUICK_LOOK_REST_MS: a long transaction's WAL writes
 * (no commit to see) cost a few percent of a core, not one.
 */
const QUICK_LOOK_MS = 1.5;
const QUICK_LOOK_REST_MS = 10;

/**
 * Whether a connection other than `db` committed since the last call: PRAGMA data_version reads the wal-index
 * header, microseconds, no lock; marmot's own commits on `db` do not change it. True when it cannot tell.
 */
export function commitWatch(db: Database): () => boolean {
  return movedSinceLastCall(db.prepare("PRAGMA data_version").pluck(true), true);
}

/** Whether `db` itself wrote since the last call: total_changes() counts the rows its own statements changed. */
export function ownWrites(db: Database): () => boolean {
  return movedSinceLastCall(db.prepare("SELECT total_changes()").pluck(true), false);
}

/**
 * Whether the value `statement` reads differs from the one it read at the last call (`whenUnreadable` when it
 * cannot be read). Prepared once by the caller: the watcher asks after every file event, thousands of times a second under
 * a busy writer.
 */
function movedSinceLastCall(statement: Statement, whenUnreadable: boolean): () => boolean {
  let last: unknown;
  return () => {
    try {
      const now = statement.get();
      const moved = now !== last;
      last = now;
      return moved;
    } catch {
      return whenUnreadable;
    }
  };
}

export class DatabaseWatcher {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private followUp: NodeJS.Timeout | undefined;
  private followUpStep = 0;
  private quickLook: NodeJS.Immediate | undefined;
  /** when the last spell of quick looks ended (process.hrtime in ms) */
  private quickLookEnded = -Infinity;

  constructor(
    private readonly options: DatabaseWatcherOptions,
    private readonly logger: Logger,
  ) {}

  start(): void {
    const dir = dirname(this.options.dbPath);
    const name = basename(this.options.dbPath);
    const watched = new Set([name, `${name}-wal`]);
    try {
      // The folder, not the files: the -wal file comes and goes with checkpoints.
      this.watcher = watch(dir, { persistent: false }, (_event, filename) => {
        if (filename === null || watched.has(filename.toString())) this.onFileEvent();
      });
      this.watcher.on("error", (err) => {
        this.logger.warn("file watching failed; falling back to polling", { dir, reason: err.message });
        this.watcher?.close();
        this.watcher = undefined;
      });
    } catch (err) {
      this.logger.warn("cannot watch the database folder; relying on polling", { dir, reason: (err as Error).message });
    }
    const every = this.options.pollingInterval > 0 ? this.options.pollingInterval : SAFETY_POLL_MS;
    this.timer = setInterval(this.options.onChange, every);
    this.timer.unref();
  }

  private onFileEvent(): void {
    const { committedElsewhere } = this.options;
    // Looks only when another connection committed since the last look: the event may be the WAL write of a commit
    // not visible yet (the follow-ups catch it), or marmot's own commit. Every commit is seen by one look or another,
    // and the timer looks regardless.
    const seen = committedElsewhere === undefined || committedElsewhere();
    if (seen) this.options.onChange();
    if (committedElsewhere === undefined || this.watcher === undefined) return;
    // Each event starts the sequence again, with one timer: a longer pause left from an earlier event must not
    // delay the look at this one.
    if (this.followUp) clearTimeout(this.followUp);
    this.followUpStep = 0;
    this.scheduleFollowUp();
    // A commit this look saw needs no quick looks (a writer at synchronous = NORMAL is visible at its WAL write).
    // Marmot's own commit writes the WAL too; an app's commit at the same moment waits for the follow-ups.
    const ours = this.options.wroteHere?.() ?? false;
    if (!seen && !ours && this.quickLook === undefined && now() - this.quickLookEnded >= QUICK_LOOK_REST_MS) this.startQuickLooks();
  }

  private startQuickLooks(): void {
    const until = now() + QUICK_LOOK_MS;
    const look = () => {
      if (this.watcher === undefined) return;
      if (this.options.committedElsewhere!()) {
        this.options.onChange();
      } else if (now() < until) {
        this.quickLook = setImmediate(look);
        return;
      }
      this.quickLook = undefined;
      this.quickLookEnded = now();
    };
    this.quickLook = setImmediate(look);
  }

  private scheduleFollowUp(): void {
    const pause = FOLLOW_UP_MS[this.followUpStep];
    if (pause === undefined || this.watcher === undefined) {
      this.followUp = undefined;
      return;
    }
    this.followUp = setTimeout(() => {
      this.followUpStep++;
      if (this.options.committedElsewhere!()) this.options.onChange();
      this.scheduleFollowUp();
    }, pause);
    this.followUp.unref();
  }

  stop(): void {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.followUp) clearTimeout(this.followUp);
    this.followUp = undefined;
    if (this.quickLook) clearImmediate(this.quickLook);
    this.quickLook = undefined;
  }
}

function now(): number {
  return performance.now();
}
