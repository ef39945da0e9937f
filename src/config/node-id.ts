// The node's identity: a uint64 kept as a decimal string, given in the config or derived from the machine.

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";

export const MAX_NODE_ID = (1n << 64n) - 1n;
const MAX_TOML_INTEGER = (1n << 63n) - 1n;
const MASK_64 = MAX_NODE_ID;
const FNV_OFFSET_BASIS_64 = 0xcbf29ce484222325n;
const FNV_PRIME_64 = 0x100000001b3n;

/** FNV-1 (multiply, then xor) over 64 bits: the hash the original used to turn a machine id into a node id. */
export function fnv1Hash64(bytes: Uint8Array): bigint {
  let hash = FNV_OFFSET_BASIS_64;
  for (const byte of bytes) {
    hash = (hash * FNV_PRIME_64) & MASK_64;
    hash ^= BigInt(byte);
  }
  return hash;
}

/**
 * The id a node gets when the config does not set one: stable across restarts on the same machine,
 * as in the original, and random where there is no machine id (containers often lack one).
 */
export function deriveNodeId(machineIdFile = "/etc/machine-id"): string {
  let source: string;
  try {
    source = readFileSync(machineIdFile, "utf8").trim();
  } catch {
    source = "";
  }
  if (source === "") source = randomUUID();
  const hash = fnv1Hash64(new TextEncoder().encode(source));
  // 0 means "derive" in the config, so it must never be the result.
  return (hash === 0n ? 1n : hash).toString();
}

export type NodeIdSetting = { kind: "derive" } | { kind: "given"; nodeId: string } | { kind: "invalid" };

export const NODE_ID_RULE =
  `must be an integer from 1 to ${MAX_TOML_INTEGER} or a quoted string of digits up to ${MAX_NODE_ID}` +
  " (0 or absent: derived from /etc/machine-id)";

/** Reads node_id as TOML gives it (integers as bigint): TOML integers stop at 2^63-1, so larger ids come as strings. */
export function readNodeId(value: unknown): NodeIdSetting {
  let id: bigint | undefined;
  if (typeof value === "bigint") id = value;
  else if (typeof value === "string" && /^[0-9]{1,20}$/.test(value)) id = BigInt(value);
  if (id === undefined || id < 0n || id > MAX_NODE_ID) return { kind: "invalid" };
  if (id === 0n) return { kind: "derive" };
  return { kind: "given", nodeId: id.toString() };
}
