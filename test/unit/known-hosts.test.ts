// known_hosts matching as OpenSSH does it: ports in brackets, wildcards, negation, @revoked, hashed names by ssh-keygen.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { checkHostKey, knownHostsName, sha256Fingerprint } from "../../src/snapshot/stores/known-hosts.js";
import { tempDir } from "../helpers/sqlite.js";

const dir = tempDir("marmot-known-hosts-");

/** A throwaway ed25519 key from ssh-keygen: its "type base64" line and its blob. */
function makeKey(name: string): { line: string; blob: Buffer; file: string } {
  const file = join(dir, name);
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", file]);
  const line = readFileSync(`${file}.pub`, "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
  return { line, blob: Buffer.from(line.split(" ")[1]!, "base64"), file };
}

const server = makeKey("server");
const other = makeKey("other");

describe("known_hosts", () => {
  it("names a host bare on port 22 and in brackets with any other port", () => {
    assert.equal(knownHostsName("db.example", 22), "db.example");
    assert.equal(knownHostsName("db.example", 2222), "[db.example]:2222");
  });

  it("prints the fingerprint ssh-keygen prints", () => {
    const printed = execFileSync("ssh-keygen", ["-l", "-E", "sha256", "-f", `${server.file}.pub`], { encoding: "utf8" });
    assert.equal(sha256Fingerprint(server.blob), printed.split(/\s+/)[1]);
  });

  it("knows a listed key, on the listed port only", () => {
    const text = `# comment\n\n[db.example]:2222 ${server.line} root@db\n`;
    assert.deepEqual(checkHostKey(text, "db.example", 2222, server.blob), { kind: "known" });
    assert.deepEqual(checkHostKey(text, "db.example", 22, server.blob), { kind: "unknown" });
    assert.deepEqual(checkHostKey(text, "db.example", 2222, other.blob), { kind: "mismatch" });
  });

  it("matches comma lists, wildcards and negated patterns", () => {
    const text = `web,db.example ${other.line}\n*.example,!evil.example ${server.line}\n`;
    assert.deepEqual(checkHostKey(text, "db.example", 22, other.blob), { kind: "known" });
    assert.deepEqual(checkHostKey(text, "backup.example", 22, server.blob), { kind: "known" });
    assert.deepEqual(checkHostKey(text, "evil.example", 22, server.blob), { kind: "unknown" });
    // db.example is listed with another key too; the matching line wins, as in ssh.
    assert.deepEqual(checkHostKey(text, "db.example", 22, server.blob), { kind: "known" });
  });

  it("refuses a revoked key even when another line lists it", () => {
    const text = `db.example ${server.line}\n@revoked * ${server.line}\n`;
    assert.deepEqual(checkHostKey(text, "db.example", 22, server.blob), { kind: "mismatch" });
  });

  it("reads names hashed by ssh-keygen -H", () => {
    const file = join(dir, "hashed_known_hosts");
    writeFileSync(file, `[10.0.0.5]:2200 ${server.line}\nplain.example ${other.line}\n`);
    execFileSync("ssh-keygen", ["-H", "-f", file], { stdio: "ignore" });
    const text = readFileSync(file, "utf8");
    assert.ok(text.startsWith("|1|"), text);
    assert.deepEqual(checkHostKey(text, "10.0.0.5", 2200, server.blob), { kind: "known" });
    assert.deepEqual(checkHostKey(text, "10.0.0.5", 2200, other.blob), { kind: "mismatch" });
    assert.deepEqual(checkHostKey(text, "10.0.0.6", 2200, server.blob), { kind: "unknown" });
    assert.deepEqual(checkHostKey(text, "plain.example", 22, other.blob), { kind: "known" });
  });
});
