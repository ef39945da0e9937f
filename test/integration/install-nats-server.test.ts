// scripts/install-nats-server.sh against a local apt repository: it fetches through apt-get from the archive the
// apt sources name, checks the pinned SHA-256, installs the binary, and leaves the machine's apt state alone.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { repoRoot } from "../helpers/marmot.js";
import { removeTempDirs, tempDir } from "../helpers/sqlite.js";

after(removeTempDirs);

const script = join(repoRoot, "scripts", "install-nats-server.sh");
const missing = ["apt-get", "dpkg-deb", "dpkg-scanpackages", "apt-ftparchive"].filter(
  (tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0,
);
const FAKE_OUTPUT = "nats-server: v2.15.1";

function run(command: string, args: string[], cwd?: string): string {
  const result = spawnSync(command, args, { cwd, encoding: "utf8" });
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} failed: ${result.stderr}${result.stdout}`);
  return result.stdout;
}

/** The machine's release name: the sources the test writes look like this machine's own Debian entry. */
function codename(): string {
  const match = /^VERSION_CODENAME=(.+)$/m.exec(readFileSync("/etc/os-release", "utf8"));
  return match?.[1]?.replace(/"/g, "") || "stable";
}

/** A file: apt repository holding a fake nats-server 2.15.1-1 in Debian's forky layout; returns it and the .deb's SHA-256. */
function makeRepository(dir: string): { repo: string; sha256: string } {
  const arch = run("dpkg", ["--print-architecture"]).trim();
  const pkg = join(dir, "pkg");
  mkdirSync(join(pkg, "DEBIAN"), { recursive: true });
  mkdirSync(join(pkg, "usr", "sbin"), { recursive: true });
  writeFileSync(
    join(pkg, "DEBIAN", "control"),
    `Package: nats-server\nVersion: 2.15.1-1\nArchitecture: ${arch}\nMaintainer: Marmot tests <tests@localhost>\nDescription: stand-in nats-server\n`,
  );
  writeFileSync(join(pkg, "usr", "sbin", "nats-server"), `#!/bin/sh\necho "${FAKE_OUTPUT}"\n`);
  chmodSync(join(pkg, "usr", "sbin", "nats-server"), 0o755);
  const repo = join(dir, "repo");
  const pool = join(repo, "pool", "main", "n", "nats-server");
  mkdirSync(pool, { recursive: true });
  const deb = join(pool, `nats-server_2.15.1-1_${arch}.deb`);
  run("dpkg-deb", ["--root-owner-group", "--build", pkg, deb]);
  const binaries = join(repo, "dists", "forky", "main", `binary-${arch}`);
  mkdirSync(binaries, { recursive: true });
  writeFileSync(join(binaries, "Packages"), run("dpkg-scanpackages", ["--arch", arch, "pool"], repo));
  const release = run(
    "apt-ftparchive",
    ["-o", "APT::FTPArchive::Release::Suite=forky", "-o", "APT::FTPArchive::Release::Codename=forky", "release", join("dists", "forky")],
    repo,
  );
  writeFileSync(join(repo, "dists", "forky", "Release"), release);
  return { repo, sha256: createHash("sha256").update(readFileSync(deb)).digest("hex") };
}

describe("scripts/install-nats-server.sh", { skip: missing.length > 0 ? `needs ${missing.join(", ")} (setup.sh installs them)` : false }, () => {
  let dir: string;
  let repo: string;
  let sha256: string;
  let sources: string;
  let fakeSystem: string;

  before(() => {
    dir = tempDir("marmot-apt-");
    // apt reads a file: archive as its own unprivileged user
    chmodSync(dir, 0o755);
    ({ repo, sha256 } = makeRepository(dir));
    // The machine's sources as an app server might have them: its Debian archive on a local mirror, a security
    // archive and a disabled file that must not be used (they point at folders that do not exist).
    sources = join(dir, "sources.list.d");
    mkdirSync(sources);
    writeFileSync(join(sources, "mirror.list"), `# the local mirror\ndeb [trusted=yes] file:${repo} ${codename()} main\n`);
    writeFileSync(
      join(sources, "security.sources"),
      `Types: deb\nURIs: file:${join(dir, "no-such-security-archive")}\nSuites: ${codename()}-security\nComponents: main\nTrusted: yes\n`,
    );
    writeFileSync(join(sources, "old.list.disabled"), `deb [trusted=yes] file:${join(dir, "no-such-archive")} ${codename()} main\n`);
    // An old nats-server on PATH, as Debian 12 has: the script must not take it as new enough, and must not
    // install Debian's own package when a fetch fails (it falls back to this one).
    fakeSystem = join(dir, "system-bin");
    mkdirSync(fakeSystem);
    writeFileSync(join(fakeSystem, "nats-server"), '#!/bin/sh\necho "nats-server: v2.9.10"\n');
    chmodSync(join(fakeSystem, "nats-server"), 0o755);
  });

  function install(binDir: string, pinnedSha: string) {
    return spawnSync("bash", [script], {
      encoding: "utf8",
      env: {
        ...process.env,
        PATH: `${fakeSystem}:/usr/bin:/bin`,
        MARMOT_APT_SOURCES: sources,
        MARMOT_NATS_BIN_DIR: binDir,
        MARMOT_NATS_PINS: `2.15.1-1 forky ${pinnedSha} ${pinnedSha}`,
      },
    });
  }

  it("fetches the pinned package through apt-get from the configured archive and installs its binary", () => {
    const aptLists = readdirSync("/var/lib/apt/lists").sort();
    const binDir = join(dir, "checkout", ".tools", "bin");
    const result = install(binDir, sha256);
    assert.equal(result.status, 0, result.stderr + result.stdout);
    const installed = join(binDir, "nats-server");
    assert.equal(run(installed, ["--version"]).trim(), FAKE_OUTPUT);
    assert.match(result.stdout, new RegExp(`from file:${repo}`));
    assert.deepEqual(readdirSync("/var/lib/apt/lists").sort(), aptLists, "the machine's package lists changed");

    // Run again: the installed binary is new enough, nothing is fetched.
    const again = install(binDir, sha256);
    assert.equal(again.status, 0, again.stderr);
    assert.equal(again.stdout, "");
  });

  it("refuses a package whose SHA-256 is not the pinned one and keeps the machine's own server", () => {
    const binDir = join(dir, "refused", ".tools", "bin");
    const wrong = createHash("sha256").update("not the package").digest("hex");
    const result = install(binDir, wrong);
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stderr, /does not match its pinned SHA-256/);
    assert.match(result.stderr, /WARNING: no nats-server 2\.10 or newer could be fetched/);
    assert.equal(existsSync(join(binDir, "nats-server")), false, "a package with the wrong hash was installed");
  });
});
