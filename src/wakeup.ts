// A latch the file watcher sets and the shipping loop waits on, so no notification between two waits is lost.

export class Wakeup {
  private pending = false;
  private waiter: (() => void) | undefined;

  notify(): void {
    this.pending = true;
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** Resolves at the next notification (at once if one came since the last wait), or when `signal` aborts. */
  wait(signal: AbortSignal): Promise<void> {
    if (this.pending || signal.aborted) {
      this.pending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        signal.removeEventListener("abort", done);
        this.pending = false;
        resolve();
      };
      this.waiter = done;
      signal.addEventListener("abort", done, { once: true });
    });
  }
}
