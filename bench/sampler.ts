// M1 and the CPU account: samples each marmot and nats-server process's resident memory every 200 ms and its CPU time per phase.

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

/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ, 100 on Linux). */
const TICKS_PER_SECOND = 100;

function readStatusMb(pid: number, field: "VmRSS" | "VmHWM"): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
    return match ? Number(match[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** User plus system CPU seconds the process has used so far. */
export function cpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

/** The main thread's CPU seconds and seconds spent runnable but waiting for a CPU (/proc/<pid>/schedstat). */
export function mainThreadSchedule(pid: number): { cpuS: number; waitS: number } | undefined {
  try {
    const [cpuNs, waitNs] = readFileSync(`/proc/${pid}/schedstat`, "utf8").trim().split(" ").map(Number);
    return { cpuS: cpuNs! / 1e9, waitS: waitNs! / 1e9 };
  } catch {
    return undefined;
  }
}

export interface CpuFigures {
  /** CPU seconds of all threads (utime + stime) */
  cpuS: number;
  /** of the main thread (where marmot's JavaScript runs): CPU seconds, and seconds it was ready but had no CPU */
  mainCpuS: number;
  mainWaitS: number;
}

export class ProcessSampler {
  private readonly samples: Sample[] = [];
  private readonly cpu = new Map<string, Record<string, CpuFigures>>();
  private timer: NodeJS.Timeout | undefined;
  private phase = "idle";
  private phaseCpuStart = new Map<string, CpuFigures>();

  constructor(
    readonly processes: WatchedProcess[],
    private readonly everyMs = 200,
  ) {}

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.everyMs);
  }

  /** Samples from now on belong to `phase` (one sample is taken at once); the CPU time of the last phase is booked. */
  enter(phase: string): void {
    this.bookCpu();
    this.phase = phase;
    this.sample();
  }

  stop(): void {
    this.bookCpu();
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private bookCpu(): void {
    const now = new Map<string, CpuFigures>();
    for (const p of this.processes) {
      const cpuS = cpuSeconds(p.pid);
      const main = mainThreadSchedule(p.pid);
      if (cpuS !== undefined && main !== undefined) now.set(p.label, { cpuS, mainCpuS: main.cpuS, mainWaitS: main.waitS });
    }
    if (this.phase !== "idle") {
      const used: Record<string, CpuFigures> = {};
      for (const [label, figures] of now) {
        const before = this.phaseCpuStart.get(label);
        if (before !== undefined) {
          used[label] = {
            cpuS: figures.cpuS - before.cpuS,
            mainCpuS: figures.mainCpuS - before.mainCpuS,
            mainWaitS: figures.mainWaitS - before.mainWaitS,
          };
        }
      }
      this.cpu.set(this.phase, used);
    }
    this.phaseCpuStart = now;
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

  memory(phase: string): Record<string, MemoryFigures> {
    const out: Record<string, MemoryFigures> = {};
    const inPhase = this.samples.filter((s) => s.phase === phase);
    for (const p of this.processes) {
      const values = inPhase.map((s) => s.rssMb.get(p.label)).filter((v): v is number => v !== undefined);
      if (values.length === 0) continue;
      out[p.label] = { startMb: values[0]!, peakMb: Math.max(...values), endMb: values[values.length - 1]! };
    }
    return out;
  }

  /** CPU time of each process during `phase` (undefined when the phase did not run). */
  cpuIn(phase: string): Record<string, CpuFigures> | undefined {
    return this.cpu.get(phase);
  }
}
