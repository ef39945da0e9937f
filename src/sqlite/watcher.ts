// Notices writes to the database within milliseconds: watches the db and -wal files, looks again shortly after each
// file event until the commit shows, with a timer as the fallback.

import { watch, type FSWatcher } from "node:fs";
import { basename, dirname } from "node:path";
import type { Database } from "better-sqlite3";
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
 * Whether a connection other than `db` committed since the last call: PRAGMA data_version reads the wal-index
 * header, microseconds, no lock; marmot's own commits on `db` do not change it. True when it cannot tell.
 */
export function commitWatch(db: Database): () => boolean {
  // Prepared once: the watcher asks after every file event, thousands of times a second under a busy writer.
  const dataVersion = db.prepare("PRAGMA data_version").pluck(true);
  let last: unknown;
  return () => {
    try {
      const now = dataVersion.get();
      const changed = now !== last;
      last = now;
      return changed;
    } catch {
      return true;
    }
  };
}

export class DatabaseWatcher {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private followUp: NodeJS.Timeout | undefined;
  private followUpStep = 0;

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
    // Takes in what is visible now, so a follow-up reports only commits that show later.
    committedElsewhere?.();
    this.options.onChange();
    if (committedElsewhere === undefined || this.watcher === undefined) return;
    // Each event starts the sequence again, with one timer: a longer pause left from an earlier event must not
    // delay the look at this one.
    if (this.followUp) clearTimeout(this.followUp);
    this.followUpStep = 0;
    this.scheduleFollowUp();
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
  }
}
