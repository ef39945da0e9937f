// The SFTP snapshot store: the original's [snapshot.sftp] url, plus a private key and a verified host key.

import { randomBytes } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { posix } from "node:path";
import { createRequire } from "node:module";
import type { Client, ConnectConfig, SFTPWrapper, Stats } from "ssh2";
import type { SnapshotConfig } from "../../config/types.js";
import { ConfigError, SnapshotAccessError, SnapshotNotFoundError, SnapshotStoreError } from "../../errors.js";
import type { Logger } from "../../log.js";
import type { SnapshotStore, TransferOptions } from "../store.js";
import { checkHostKey, knownHostsName, sha256Fingerprint } from "./known-hosts.js";
import { PIPELINED, sftpDownload, sftpUpload } from "./sftp-transfer.js";

/** ssh2 takes a fifth of a second to load: only nodes that use this store load it (CommonJS, so synchronously). */
function ssh2(): typeof import("ssh2") {
  return createRequire(import.meta.url)("ssh2");
}

/** SFTP status codes (draft-ietf-secsh-filexfer) the store tells apart. */
const NO_SUCH_FILE = 2;
const PERMISSION_DENIED = 3;
const FAILURE = 4;

type SftpConfig = SnapshotConfig["sftp"];

/** An SFTP store for `[snapshot.sftp]`; throws ConfigError naming the key when the keys cannot work. */
export function createSftpStore(config: SftpConfig, logger: Logger): SnapshotStore {
  return new SftpStore(config, logger);
}

interface SftpTarget {
  host: string;
  port: number;
  username: string;
  password?: string;
  privateKey?: Buffer;
  /** the folder: absolute as in the URL, or "." (the login's home) when the URL has no path */
  folder: string;
  knownHostsFile: string;
}

function parseSftpConfig(config: SftpConfig): SftpTarget {
  const example = "sftp://user@host:22/srv/snapshots";
  if (config.url === "") {
    throw new ConfigError(`[snapshot.sftp] url is empty: give the server and folder, e.g. url = "${example}"`);
  }
  let url: URL;
  try {
    url = new URL(config.url);
  } catch {
    throw new ConfigError(`[snapshot.sftp] url is not a URL: give one such as "${example}"`);
  }
  if (url.protocol !== "sftp:" || url.hostname === "") {
    throw new ConfigError(`[snapshot.sftp] url must be sftp://user[:password]@host[:port]/path (e.g. "${example}")`);
  }
  if (url.username === "") {
    throw new ConfigError(`[snapshot.sftp] url has no user: write it before the host (e.g. "${example}")`);
  }
  const password = url.password === "" ? undefined : decodeURIComponent(url.password);
  let privateKey: Buffer | undefined;
  if (config.keyFile !== "") {
    try {
      privateKey = readFileSync(config.keyFile);
    } catch (err) {
      throw new ConfigError(`[snapshot.sftp] key_file ${config.keyFile} cannot be read: ${(err as Error).message}`);
    }
    const parsed = ssh2().utils.parseKey(privateKey);
    const problem = parsed instanceof Error ? parsed.message : parsed.isPrivateKey() ? undefined : "it is a public key";
    if (problem !== undefined) {
      throw new ConfigError(
        `[snapshot.sftp] key_file ${config.keyFile} is not a usable private key (${problem}); keys protected by a passphrase are not supported: use a key without one, readable only by marmot's user`,
      );
    }
  }
  if (password === undefined && privateKey === undefined) {
    throw new ConfigError(
      "[snapshot.sftp] has no credentials: set key_file to a private key (recommended) or put a password in url (sftp://user:password@host/path)",
    );
  }
  const path = decodeURIComponent(url.pathname);
  return {
    // URL keeps IPv6 hosts in brackets; the socket wants them bare.
    host: url.hostname.replace(/^\[|\]$/g, ""),
    port: url.port === "" ? 22 : Number(url.port),
    username: decodeURIComponent(url.username),
    password,
    privateKey,
    folder: path === "" || path === "/" ? (path === "" ? "." : "/") : path.replace(/\/+$/, ""),
    knownHostsFile: config.knownHostsFile !== "" ? config.knownHostsFile : posix.join(homedir(), ".ssh", "known_hosts"),
  };
}

function sftpCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === "number" ? code : undefined;
}

/** Turns ssh2's callback style into a promise. */
function call<T = void>(run: (callback: (err: Error | null | undefined, value?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => run((err, value) => (err ? reject(err) : resolve(value as T))));
}

class SftpStore implements SnapshotStore {
  readonly description: string;
  private readonly target: SftpTarget;
  private session: Promise<{ client: Client; sftp: SFTPWrapper }> | undefined;
  private folderReady = false;
  /** set once the server refused pipelined writes */
  private writesInOrder = false;

  constructor(
    config: SftpConfig,
    private readonly logger: Logger,
  ) {
    this.target = parseSftpConfig(config);
    const { username, host, port, folder } = this.target;
    const where = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
    this.description = `sftp://${username}@${where}${folder === "." ? " (home folder)" : folder}`;
  }

  /** One SSH connection, opened on first use and again after it drops. */
  private connect(): Promise<{ client: Client; sftp: SFTPWrapper }> {
    if (this.session !== undefined) return this.session;
    const { host, port, username, password, privateKey } = this.target;
    let hostKeyProblem: Error | undefined;
    const hostVerifier = (keyBlob: Buffer): boolean => {
      hostKeyProblem = this.hostKeyProblem(keyBlob);
      return hostKeyProblem === undefined;
    };
    const options: ConnectConfig = {
      host,
      port,
      username,
      password,
      privateKey,
      hostVerifier,
      readyTimeout: 20_000,
      keepaliveInterval: 15_000,
    };
    const session = new Promise<{ client: Client; sftp: SFTPWrapper }>((resolve, reject) => {
      const client = new (ssh2().Client)();
      client.once("ready", () => {
        client.sftp((err, sftp) => {
          if (err) {
            client.end();
            reject(new SnapshotStoreError(`the SSH server of ${this.description} refused an SFTP session: ${err.message}`, { cause: err }));
          } else {
            resolve({ client, sftp });
          }
        });
      });
      client.on("error", (err: Error & { level?: string }) => {
        if (this.session === session) this.session = undefined;
        if (hostKeyProblem !== undefined) return reject(hostKeyProblem);
        if (err.level === "client-authentication") {
          return reject(
            new SnapshotAccessError(
              `${this.description} refused the login of ${username}: fix the user or password in [snapshot.sftp] url, or [snapshot.sftp] key_file (its public key must be in that user's authorized_keys on ${host})`,
              { cause: err },
            ),
          );
        }
        reject(new SnapshotStoreError(`cannot reach ${this.description}: ${err.message} (is ${host}:${port} up? marmot retries)`, { cause: err }));
      });
      client.on("close", () => {
        if (this.session === session) this.session = undefined;
        reject(new SnapshotStoreError(`the SSH connection to ${this.description} closed`));
      });
      client.connect(options);
    });
    this.session = session;
    session.catch(() => undefined);
    return session;
  }

  /**
   * undefined when the server's key is in the known-hosts file; else the error that says what to do. The file is
   * read at each connection, so a key added with ssh-keyscan counts without a restart.
   */
  private hostKeyProblem(keyBlob: Buffer): Error | undefined {
    const { host, port, knownHostsFile } = this.target;
    const fingerprint = sha256Fingerprint(keyBlob);
    let text = "";
    let missing = "";
    try {
      text = readFileSync(knownHostsFile, "utf8");
    } catch (err) {
      missing = ` (${knownHostsFile} cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`;
    }
    const verdict = checkHostKey(text, host, port, keyBlob);
    if (verdict.kind === "known") return undefined;
    const keyscan = `ssh-keyscan -p ${port} ${host} >> ${knownHostsFile}`;
    if (verdict.kind === "mismatch") {
      return new SnapshotAccessError(
        `the SSH host key of ${knownHostsName(host, port)} (${fingerprint}) is NOT the one [snapshot.sftp] known_hosts_file ${knownHostsFile} lists for it: ` +
          "someone may be in between, or the server's key changed. If you know the key changed, remove the old line and add the new key " +
          `(check the fingerprint with the server's administrator first): ${keyscan}`,
      );
    }
    return new SnapshotAccessError(
      `the SSH host key of ${knownHostsName(host, port)} (${fingerprint}) is unknown: it is not in [snapshot.sftp] known_hosts_file ${knownHostsFile}${missing}. ` +
        `Marmot does not trust an unknown server. Check the fingerprint, then add the key: ${keyscan}`,
    );
  }

  private path(name: string): string {
    return posix.join(this.target.folder, name);
  }

  /** The store's error for an SFTP failure on `name`. */
  private translate(err: unknown, action: string, name: string): Error {
    if (err instanceof SnapshotStoreError || err instanceof SnapshotAccessError || err instanceof SnapshotNotFoundError) return err;
    const message = (err as Error).message ?? String(err);
    // Only a read can miss its object; a write that meets "no such file" lost its folder, which the next try recreates.
    if (sftpCode(err) === NO_SUCH_FILE && ["download", "read", "remove"].includes(action)) {
      return new SnapshotNotFoundError(`no object ${name} in ${this.description}`, { cause: err });
    }
    if (sftpCode(err) === PERMISSION_DENIED) {
      return new SnapshotAccessError(
        `cannot ${action} ${this.path(name)} on ${this.description}: permission denied; fix the path in [snapshot.sftp] url or the folder's rights for ${this.target.username}`,
        { cause: err },
      );
    }
    return new SnapshotStoreError(`cannot ${action} ${name} on ${this.description}: ${message} (marmot retries)`, { cause: err });
  }

  /** `mkdir -p` of the folder, once per store. */
  private async ensureFolder(sftp: SFTPWrapper): Promise<void> {
    if (this.folderReady || this.target.folder === "." || this.target.folder === "/") return;
    const absolute = this.target.folder.startsWith("/");
    const segments = this.target.folder.split("/").filter((segment) => segment !== "");
    for (let depth = 1; depth <= segments.length; depth++) {
      const dir = (absolute ? "/" : "") + segments.slice(0, depth).join("/");
      try {
        await call((done) => sftp.mkdir(dir, done));
      } catch (err) {
        // mkdir of an existing folder fails with a generic code: stat tells whether it is there.
        const stats = await call<Stats>((done) => sftp.stat(dir, done)).catch(() => undefined);
        if (stats === undefined || !stats.isDirectory()) throw this.translate(err, "create the folder", dir);
      }
    }
    this.folderReady = true;
  }

  /** Moves `temporary` onto `final`, replacing it atomically where the server can (OpenSSH's posix-rename). */
  private async replace(sftp: SFTPWrapper, temporary: string, final: string): Promise<void> {
    try {
      await call((done) => sftp.ext_openssh_rename(temporary, final, done));
      return;
    } catch (err) {
      if (!/does not support/.test((err as Error).message)) throw err;
    }
    // Plain SFTP rename refuses an existing target: the old object is removed first, so a crash between the two
    // steps leaves only the complete temporary file.
    await call((done) => sftp.unlink(final, done)).catch((err) => {
      if (sftpCode(err) !== NO_SUCH_FILE) throw err;
    });
    await call((done) => sftp.rename(temporary, final, done));
  }

  /** Writes under a temporary name with `write`, then renames it onto `name`; removes the temporary on failure. */
  private async put(name: string, write: (sftp: SFTPWrapper, temporary: string) => Promise<void>): Promise<void> {
    const { sftp } = await this.connect();
    await this.ensureFolder(sftp);
    const temporary = this.path(`${name}.tmp-${randomBytes(6).toString("hex")}`);
    try {
      await write(sftp, temporary);
      await this.replace(sftp, temporary, this.path(name));
    } catch (err) {
      if (sftpCode(err) === NO_SUCH_FILE) this.folderReady = false;
      await call((done) => sftp.unlink(temporary, done)).catch(() => undefined);
      throw err;
    }
  }

  async upload(name: string, localPath: string, options?: TransferOptions): Promise<void> {
    const total = statSync(localPath).size;
    try {
      await this.put(name, async (sftp, temporary) => {
        if (this.writesInOrder) return sftpUpload(sftp, localPath, temporary, total, 1, options);
        // Progress starts again at 0 if the upload is sent again one write at a time: report only new highs.
        let reported = 0;
        const progress: TransferOptions = {
          signal: options?.signal,
          onProgress: (p) => {
            if (p.bytes > reported) options?.onProgress?.(p);
            reported = Math.max(reported, p.bytes);
          },
        };
        try {
          await sftpUpload(sftp, localPath, temporary, total, PIPELINED, progress);
        } catch (err) {
          if (options?.signal?.aborted || sftpCode(err) !== FAILURE) throw err;
          this.logger.info("the SFTP server refused a write of a pipelined upload; sending writes one at a time from now on", {
            store: this.description,
            error: (err as Error).message,
          });
          this.writesInOrder = true;
          await sftpUpload(sftp, localPath, temporary, total, 1, progress);
        }
      });
      this.logger.debug("snapshot object uploaded", { store: this.description, object: name, bytes: total });
    } catch (err) {
      if (options?.signal?.aborted) throw options.signal.reason;
      throw this.translate(err, "upload", name);
    }
  }

  async download(name: string, localPath: string, options?: TransferOptions): Promise<void> {
    try {
      const { sftp } = await this.connect();
      const stats = await call<Stats>((done) => sftp.stat(this.path(name), done));
      await sftpDownload(sftp, this.path(name), localPath, stats.size, options);
    } catch (err) {
      if (options?.signal?.aborted) throw options.signal.reason;
      throw this.translate(err, "download", name);
    }
  }

  async writeSmall(name: string, content: Uint8Array): Promise<void> {
    try {
      await this.put(name, (sftp, temporary) => call((done) => sftp.writeFile(temporary, Buffer.from(content), done)));
    } catch (err) {
      throw this.translate(err, "write", name);
    }
  }

  async readSmall(name: string): Promise<Uint8Array | null> {
    try {
      const { sftp } = await this.connect();
      return new Uint8Array(await call<Buffer>((done) => sftp.readFile(this.path(name), done)));
    } catch (err) {
      const translated = this.translate(err, "read", name);
      if (translated instanceof SnapshotNotFoundError) return null;
      throw translated;
    }
  }

  async remove(name: string): Promise<void> {
    try {
      const { sftp } = await this.connect();
      await call((done) => sftp.unlink(this.path(name), done));
    } catch (err) {
      const translated = this.translate(err, "remove", name);
      if (!(translated instanceof SnapshotNotFoundError)) throw translated;
    }
  }

  async close(): Promise<void> {
    const session = this.session;
    this.session = undefined;
    if (session === undefined) return;
    const { client } = await session.catch(() => ({ client: undefined }));
    if (client === undefined) return;
    await new Promise<void>((resolve) => {
      client.once("close", () => resolve());
      client.end();
      setTimeout(resolve, 2000).unref();
    });
  }
}
