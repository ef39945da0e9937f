// Real servers for the snapshot store tests: s3rver, rclone's WebDAV server and OpenSSH's sshd, on loopback ports.

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { userInfo } from "node:os";
import { join } from "node:path";
import { repoRoot, waitFor } from "./marmot.js";
import { freePort } from "./ports.js";
import { killPid, spawnTracked } from "./processes.js";
import { tempDir } from "./sqlite.js";

export interface TestStoreServer {
  pid: number;
  port: number;
  /** the folder on disk where the server keeps what it is sent */
  dataDir: string;
  /** what the server printed so far (s3rver logs every request) */
  output(): string;
  stop(): Promise<void>;
}

/** The absolute path of a program the tests need, or a failure that says how to get it. */
function requireProgram(paths: readonly string[], debianPackage: string): string {
  const found = paths.find((path) => existsSync(path));
  if (found === undefined) {
    throw new Error(`${paths[0]} is missing: run ./scripts/setup.sh (it installs the Debian package ${debianPackage})`);
  }
  return found;
}

function acceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/** Spawns a server, and resolves once its port accepts connections; stops it (by pid) when it does not. */
async function startServer(command: string, args: string[], port: number, dataDir: string): Promise<TestStoreServer> {
  const child = spawnTracked(command, args);
  let output = "";
  child.stdout?.on("data", (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on("data", (chunk: Buffer) => (output += chunk.toString()));
  const pid = child.pid;
  if (pid === undefined) throw new Error(`cannot start ${command}`);
  const stop = () => killPid(pid);
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`${command} exited with ${child.exitCode}: ${output}`);
        return acceptsConnections(port);
      },
      30_000,
      () => `${command} on port ${port} did not accept connections: ${output}`,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return { pid, port, dataDir, output: () => output, stop };
}

export const S3RVER_BUCKET = "snapshots";
/** s3rver's built-in account, whose signatures it checks. */
export const S3RVER_ACCESS_KEY = "S3RVER";
export const S3RVER_SECRET = "S3RVER";

/** s3rver (npm) in its own Node process with one bucket; it logs each request with its method, path and status. */
export async function startS3rver(): Promise<TestStoreServer> {
  const bin = requireProgram([join(repoRoot, "node_modules", "s3rver", "bin", "s3rver.js")], "(npm) s3rver");
  const port = await freePort();
  const dataDir = tempDir("marmot-s3rver-");
  return startServer(
    process.execPath,
    [bin, "--directory", dataDir, "--address", "127.0.0.1", "--port", String(port), "--configure-bucket", S3RVER_BUCKET],
    port,
    dataDir,
  );
}

export const WEBDAV_USER = "marmot";
export const WEBDAV_PASSWORD = "webdav-pass";

/** `rclone serve webdav` of a temporary folder under /dav, with a login. */
export async function startRcloneWebDav(): Promise<TestStoreServer> {
  const rclone = requireProgram(["/usr/bin/rclone"], "rclone");
  const port = await freePort();
  const dataDir = tempDir("marmot-webdav-");
  return startServer(
    rclone,
    [
      "serve",
      "webdav",
      dataDir,
      "--addr",
      `127.0.0.1:${port}`,
      "--baseurl",
      "/dav",
      "--user",
      WEBDAV_USER,
      "--pass",
      WEBDAV_PASSWORD,
      "--config",
      "/dev/null",
    ],
    port,
    dataDir,
  );
}

export interface TestSshServer extends TestStoreServer {
  /** the user the test logs in as (the test's own user) */
  user: string;
  /** a private key whose public half is authorized */
  clientKeyFile: string;
  /** the server's public host key, "ssh-ed25519 AAAA..." */
  hostPublicKey: string;
  /** a host key the server does not have, same form */
  otherPublicKey: string;
  dir: string;
}

function sshKeygen(path: string): void {
  execFileSync(requireProgram(["/usr/bin/ssh-keygen"], "openssh-client"), ["-q", "-t", "ed25519", "-N", "", "-f", path]);
}

/**
 * OpenSSH's sshd with its own config, throwaway host and client keys, and only public key logins of the test's own
 * user (root in CI, which this sshd alone permits).
 */
export async function startSshd(): Promise<TestSshServer> {
  const sshd = requireProgram(["/usr/sbin/sshd"], "openssh-server");
  const port = await freePort();
  const dir = tempDir("marmot-sshd-");
  const dataDir = join(dir, "data");
  mkdirSync(dataDir);
  sshKeygen(join(dir, "host_key"));
  sshKeygen(join(dir, "other_host_key"));
  sshKeygen(join(dir, "client_key"));
  writeFileSync(join(dir, "authorized_keys"), readFileSync(join(dir, "client_key.pub")));
  // sshd refuses to start without its privilege separation folder, which only the Debian service creates.
  if (userInfo().uid === 0) mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  const config = join(dir, "sshd_config");
  writeFileSync(
    config,
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${join(dir, "host_key")}`,
      `PidFile ${join(dir, "sshd.pid")}`,
      `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
      // The temporary folder's owner and modes are not what StrictModes insists on.
      "StrictModes no",
      "UsePAM no",
      "PermitRootLogin prohibit-password",
      "PubkeyAuthentication yes",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "Subsystem sftp internal-sftp",
      "",
    ].join("\n"),
  );
  const server = await startServer(sshd, ["-D", "-e", "-f", config], port, dataDir);
  const publicKey = (file: string) => readFileSync(join(dir, file), "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
  return {
    ...server,
    user: userInfo().username,
    clientKeyFile: join(dir, "client_key"),
    hostPublicKey: publicKey("host_key.pub"),
    otherPublicKey: publicKey("other_host_key.pub"),
    dir,
  };
}

export const SFTP_PASSWORD_USER = "marmot";
export const SFTP_PASSWORD = "sftp-pass";

export interface TestPasswordSftpServer extends TestStoreServer {
  /** the server's public host key, "ssh-ed25519 AAAA..." */
  hostPublicKey: string;
  dir: string;
}

/**
 * `rclone serve sftp` of a temporary folder with a password login: a second SFTP server, which (without a VFS
 * cache) takes writes only in order.
 */
export async function startRcloneSftp(): Promise<TestPasswordSftpServer> {
  const rclone = requireProgram(["/usr/bin/rclone"], "rclone");
  const port = await freePort();
  const dir = tempDir("marmot-rclone-sftp-");
  const dataDir = join(dir, "data");
  mkdirSync(dataDir);
  sshKeygen(join(dir, "host_key"));
  writeFileSync(join(dir, "authorized_keys"), "");
  const server = await startServer(
    rclone,
    [
      "serve",
      "sftp",
      dataDir,
      "--addr",
      `127.0.0.1:${port}`,
      "--user",
      SFTP_PASSWORD_USER,
      "--pass",
      SFTP_PASSWORD,
      "--key",
      join(dir, "host_key"),
      "--authorized-keys",
      join(dir, "authorized_keys"),
      "--config",
      "/dev/null",
    ],
    port,
    dataDir,
  );
  const hostPublicKey = readFileSync(join(dir, "host_key.pub"), "utf8").trim().split(/\s+/).slice(0, 2).join(" ");
  return { ...server, hostPublicKey, dir };
}
