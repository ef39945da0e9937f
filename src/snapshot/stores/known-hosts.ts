// OpenSSH known_hosts checking for the SFTP store: is this server's host key the one the user recorded?

import { createHash, createHmac, timingSafeEqual } from "node:crypto";

export type HostKeyVerdict =
  | { kind: "known" }
  /** the file lists other keys for this host (or revokes this key): possibly someone in between */
  | { kind: "mismatch" }
  | { kind: "unknown" };

/** How known_hosts names a host: the bare name on port 22, "[host]:port" on any other. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

/** The fingerprint ssh prints: "SHA256:" and the unpadded base64 of the key blob's SHA-256. */
export function sha256Fingerprint(keyBlob: Buffer): string {
  return `SHA256:${createHash("sha256").update(keyBlob).digest("base64").replace(/=+$/, "")}`;
}

/** "|1|salt|hash": the hash is HMAC-SHA1 of the host name keyed with the salt (ssh-keygen -H). */
function hashedPatternMatches(pattern: string, name: string): boolean {
  const [, version, salt, hash] = pattern.split("|");
  if (version !== "1" || salt === undefined || hash === undefined) return false;
  const expected = Buffer.from(hash, "base64");
  const actual = createHmac("sha1", Buffer.from(salt, "base64")).update(name).digest();
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}

/** OpenSSH's wildcards: "*" any run, "?" one character. */
function globMatches(pattern: string, name: string): boolean {
  const regex = pattern
    .replace(/[.+^${}()|[\]\\]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${regex}$`, "i").test(name);
}

/** A comma-separated pattern list matches when some pattern does and no negated ("!") pattern does. */
function hostsFieldMatches(field: string, name: string): boolean {
  if (field.startsWith("|")) return hashedPatternMatches(field, name);
  let matched = false;
  for (const pattern of field.split(",")) {
    if (pattern.startsWith("!")) {
      if (globMatches(pattern.slice(1), name)) return false;
    } else if (globMatches(pattern, name)) {
      matched = true;
    }
  }
  return matched;
}

/** Checks `keyBlob` (the server's key in SSH wire form) for `host`:`port` against the text of a known_hosts file. */
export function checkHostKey(knownHosts: string, host: string, port: number, keyBlob: Buffer): HostKeyVerdict {
  const name = knownHostsName(host, port);
  let hostListed = false;
  let known = false;
  for (const rawLine of knownHosts.split(/\r?\n/)) {
    const line = rawLine.trim();
    if (line === "" || line.startsWith("#")) continue;
    const fields = line.split(/\s+/);
    let marker: string | undefined;
    if (fields[0]?.startsWith("@")) marker = fields.shift();
    const [hosts, , keyText] = fields;
    if (hosts === undefined || keyText === undefined) continue;
    // Certificate authorities would need certificate checks, which this store does not do: such lines are skipped.
    if (marker === "@cert-authority") continue;
    if (!hostsFieldMatches(hosts, name)) continue;
    const sameKey = Buffer.from(keyText, "base64").equals(keyBlob);
    // A revoked key is refused even when another line lists it as known.
    if (marker === "@revoked") {
      if (sameKey) return { kind: "mismatch" };
      continue;
    }
    if (sameKey) known = true;
    else hostListed = true;
  }
  if (known) return { kind: "known" };
  return hostListed ? { kind: "mismatch" } : { kind: "unknown" };
}
