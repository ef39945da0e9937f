// M1: samples the resident memory of every marmot and nats-server process every 200 ms, by phase.

import { readFileSync } from "node:fs";

export interface WatchedProcess {
  label: string;
  pid: number;
}

export interface MemoryFigures {
  /** MB at the phase's first sample, its highest sample, and its last sample */
  startMb: number;
  peakMb: number;
  endMb: number;
}

interface Sample {
  phase: string;
  rssMb: Map<string, number>;
}

function readStatusMb(pid: number, field: "VmRSS" | "VmHWM"): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
    return match ? Number(match[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

export class MemorySampler {
  private readonly samples: Sample[] = [];
  private timer: NodeJS.Timeout | undefined;
  private phase = "idle";

  constructor(
    private readonly processes: WatchedProcess[],
    private readonly everyMs = 200,
  ) {}

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.everyMs);
  }

  /** Samples from now on belong to `phase` (one sample is taken at once). */
  enter(phase: string): void {
    this.phase = phase;
    this.sample();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private sample(): void {
    const rssMb = new Map<string, number>();
    for (const p of this.processes) {
      const mb = readStatusMb(p.pid, "VmRSS");
      if (mb !== undefined) rssMb.set(p.label, mb);
    }
    this.samples.push({ phase: this.phase, rssMb });
  }

  /** High-water mark of each process since it started (the kernel's own peak, between our samples too). */
  highWaterMb(): Record<string, number | undefined> {
    return Object.fromEntries(this.processes.map((p) => [p.label, readStatusMb(p.pid, "VmHWM")]));
  }

  figures(phase: string): Record<string, MemoryFigures> {
    const out: Record<string, MemoryFigures> = {};
    const inPhase = this.samples.filter((s) => s.phase === phase);
    for (const p of this.processes) {
      const values = inPhase.map((s) => s.rssMb.get(p.label)).filter((v): v is number => v !== undefined);
      if (values.length === 0) continue;
      out[p.label] = { startMb: values[0]!, peakMb: Math.max(...values), endMb: values[values.length - 1]! };
    }
    return out;
  }
}
