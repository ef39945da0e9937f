// Notices writes to the database within milliseconds: watches the db and -wal files, with a timer as the fallback.

import { watch, type FSWatcher } from "node:fs";
import { basename, dirname } from "node:path";
import type { Logger } from "../log.js";

export interface DatabaseWatcherOptions {
  dbPath: string;
  /** polling_interval in ms; 0 means watching only, plus a slow safety poll */
  pollingInterval: number;
  onChange: () => void;
}

/** Without polling configured, still look once a second: a missed file event must not strand a change. */
const SAFETY_POLL_MS = 1000;

export class DatabaseWatcher {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;

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
        if (filename === null || watched.has(filename.toString())) this.options.onChange();
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

  stop(): void {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
