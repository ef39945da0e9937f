// The status endpoints of a marmot node (GET /status, /readyz) and the [prometheus] section that turns them on.

import type { ClusterStatus } from "../../src/cluster/status-model.js";

/** TOML that serves the status page, /status, /readyz and /metrics on 127.0.0.1:<port>. */
export function statusToml(port: number): string {
  return `[prometheus]\nenable = true\nbind = "127.0.0.1:${port}"\n`;
}

export async function fetchStatus(port: number): Promise<ClusterStatus> {
  const res = await fetch(`http://127.0.0.1:${port}/status`, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`GET /status answered ${res.status}`);
  return (await res.json()) as ClusterStatus;
}

export interface ReadyzAnswer {
  code: number;
  ready: boolean;
  reason: string;
}

export async function fetchReadyz(port: number): Promise<ReadyzAnswer> {
  const res = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(5000) });
  const body = (await res.json()) as { ready: boolean; reason: string };
  return { code: res.status, ...body };
}
