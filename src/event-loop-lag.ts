// How long the event loop was late to run what was due: the figure that shows whether marmot's one thread ever
// blocks (a synchronous wait on the database, a long computation), for /metrics and the benchmark.

import { monitorEventLoopDelay, type IntervalHistogram } from "node:perf_hooks";

export interface LagFigures {
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** How often the loop is sampled; Node's histogram records the whole interval, so this much is taken off. */
const RESOLUTION_MS = 10;

/** Samples the event loop's delay; take() returns the figures since the previous take() and starts anew. */
export class EventLoopLag {
  private readonly histogram: IntervalHistogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });

  start(): void {
    this.histogram.enable();
  }

  stop(): void {
    this.histogram.disable();
  }

  take(): LagFigures {
    const h = this.histogram;
    const lateMs = (ns: number) => Math.max(0, ns / 1e6 - RESOLUTION_MS);
    const figures =
      h.count === 0 ? { p50Ms: 0, p99Ms: 0, maxMs: 0 } : { p50Ms: lateMs(h.percentile(50)), p99Ms: lateMs(h.percentile(99)), maxMs: lateMs(h.max) };
    h.reset();
    return figures;
  }
}
