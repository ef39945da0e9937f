// The WebDAV snapshot store: the original's [snapshot.webdav] url, with the folder, login and secret as query parameters.

import { randomBytes } from "node:crypto";
import { createReadStream, createWriteStream, statSync } from "node:fs";
import { type ClientRequest, type IncomingMessage, request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import type { SnapshotConfig } from "../../config/types.js";
import { ConfigError, SnapshotAccessError, SnapshotNotFoundError, SnapshotStoreError } from "../../errors.js";
import type { Logger } from "../../log.js";
import type { SnapshotStore, TransferOptions } from "../store.js";
import { progressCounter } from "../progress.js";

/** The original's query parameters; they are taken off the URL before any request. */
const DIR_PARAM = "dir";
const LOGIN_PARAM = "login";
const SECRET_PARAM = "secret";

const CLEANUP_RETRY_DELAYS_MS = [1_000, 5_000];
const IDLE_TIMEOUT_MS = 300_000;

/** A WebDAV store for `[snapshot.webdav] url`; throws ConfigError when the url cannot work. */
export function createWebDavStore(config: SnapshotConfig["webdav"], logger: Logger): SnapshotStore {
  return new WebDavStore(config.url, logger);
}

interface WebDavTarget {
  /** the server's URL without marmot's parameters, ending in "/" */
  base: URL;
  /** the folder under `base`, as path segments */
  dir: string[];
  authorization?: string;
}

function parseWebDavUrl(text: string): WebDavTarget {
  const example = "https://host/path?dir=/snapshots&login=user&secret=pass";
  if (text === "") {
    throw new ConfigError(`[snapshot.webdav] url is empty: give the server's address, e.g. url = "${example}"`);
  }
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(`[snapshot.webdav] url is not a URL: give one such as "${example}"`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new ConfigError(`[snapshot.webdav] url must start with http:// or https:// (e.g. "${example}"), not ${url.protocol}//`);
  }
  const login = url.searchParams.get(LOGIN_PARAM) ?? "";
  const secret = url.searchParams.get(SECRET_PARAM) ?? "";
  if (url.username !== "" || url.password !== "") {
    throw new ConfigError(
      `[snapshot.webdav] url: put the login and password in its query (...?dir=/snapshots&login=user&secret=pass), not before the host`,
    );
  }
  if ((login === "") !== (secret === "")) {
    throw new ConfigError(
      `[snapshot.webdav] url has a ${login === "" ? "secret but no login" : "login but no secret"}: give both query parameters (...&login=user&secret=pass), or neither for a server without authentication`,
    );
  }
  // As in the original, "dir" is a folder below the URL's own path ("/" when absent).
  const dir = (url.searchParams.get(DIR_PARAM) ?? "/").split("/").filter((segment) => segment !== "" && segment !== ".");
  if (dir.includes("..")) {
    throw new ConfigError(`[snapshot.webdav] url: the dir parameter may not contain ".."`);
  }
  url.searchParams.delete(DIR_PARAM);
  url.searchParams.delete(LOGIN_PARAM);
  url.searchParams.delete(SECRET_PARAM);
  url.hash = "";
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  const authorization = login === "" ? undefined : `Basic ${Buffer.from(`${login}:${secret}`).toString("base64")}`;
  return { base: url, dir, authorization };
}

class WebDavStore implements SnapshotStore {
  readonly description: string;
  private readonly target: WebDavTarget;
  private folderReady = false;

  constructor(
    url: string,
    private readonly logger: Logger,
  ) {
    this.target = parseWebDavUrl(url);
    this.description = `WebDAV ${this.folderUrl(this.target.dir.length).toString()}`;
  }

  /** The URL of the first `depth` folders of dir. */
  private folderUrl(depth: number): URL {
    const path = this.target.dir.slice(0, depth).map(encodeURIComponent).join("/");
    return new URL(path === "" ? "" : `${path}/`, this.target.base);
  }

  private objectUrl(name: string): URL {
    return new URL(encodeURIComponent(name), this.folderUrl(this.target.dir.length));
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return this.target.authorization === undefined ? extra : { ...extra, Authorization: this.target.authorization };
  }

  private async request(
    method: string,
    url: URL,
    action: string,
    init: { headers?: Record<string, string>; body?: Uint8Array; signal?: AbortSignal } = {},
  ): Promise<Response> {
    let response: Response;
    try {
      response = await fetch(url, { method, headers: this.headers(init.headers), body: init.body as BodyInit | undefined, signal: init.signal });
    } catch (err) {
      throw this.unreachable(err, url, action, init.signal);
    }
    return this.checkAccess(response, action);
  }

  /**
   * PUT of a local file, streamed. Not with fetch: Node's fetch reads a streamed request body ahead of the
   * network, and a whole snapshot then ends up in memory; node:http's pipeline waits for the socket.
   */
  private async putFile(url: URL, localPath: string, total: number, action: string, options: TransferOptions): Promise<Response> {
    const send = url.protocol === "https:" ? httpsRequest : httpRequest;
    let request: ClientRequest | undefined;
    try {
      request = send(url, {
        method: "PUT",
        headers: this.headers({ "Content-Length": String(total) }),
        signal: options.signal,
      });
      // As fetch does, give up on a server that goes silent rather than wait forever.
      request.setTimeout(IDLE_TIMEOUT_MS, () => request!.destroy(new Error(`no answer for ${IDLE_TIMEOUT_MS / 1000} s`)));
      const answered = new Promise<IncomingMessage>((resolve, reject) => {
        request!.once("response", resolve);
        request!.once("error", reject);
      });
      const sent = pipeline(createReadStream(localPath), progressCounter(options, total), request);
      // A server may answer (401, say) before it read the whole body, and stop reading it.
      sent.catch(() => undefined);
      const answer = await answered;
      if (answer.statusCode !== undefined && answer.statusCode < 300) await sent;
      const chunks: Buffer[] = [];
      for await (const chunk of answer) chunks.push(chunk as Buffer);
      const status = answer.statusCode ?? 500;
      return this.checkAccess(new Response(status === 204 ? null : Buffer.concat(chunks), { status, statusText: answer.statusMessage }), action);
    } catch (err) {
      request?.destroy();
      if (err instanceof SnapshotAccessError) throw err;
      throw this.unreachable(err, url, action, options.signal);
    }
  }

  private unreachable(err: unknown, url: URL, action: string, signal?: AbortSignal): unknown {
    if (signal?.aborted) return signal.reason;
    const cause = (err as { cause?: { message?: string } }).cause?.message ?? (err as Error).message;
    return new SnapshotStoreError(`cannot ${action} at ${this.description}: ${cause} (is ${url.host} reachable? marmot retries)`, {
      cause: err,
    });
  }

  private async checkAccess(response: Response, action: string): Promise<Response> {
    if (response.status === 401 || response.status === 403) {
      await response.body?.cancel();
      throw new SnapshotAccessError(
        `cannot ${action} at ${this.description}: the server answered ${response.status} ${response.statusText}; ` +
          "fix the login and secret parameters of [snapshot.webdav] url (and that user's rights on the folder)",
      );
    }
    return response;
  }

  private async failure(response: Response, action: string): Promise<SnapshotStoreError> {
    const text = (await response.text().catch(() => "")).slice(0, 200).replace(/\s+/g, " ");
    return new SnapshotStoreError(
      `cannot ${action} at ${this.description}: the server answered ${response.status} ${response.statusText} ${text}`.trim(),
    );
  }

  /** MKCOL each missing folder of dir, like `mkdir -p`; once per store. */
  private async ensureFolder(): Promise<void> {
    if (this.folderReady) return;
    for (let depth = 1; depth <= this.target.dir.length; depth++) {
      const response = await this.request("MKCOL", this.folderUrl(depth), "create the folder");
      await response.body?.cancel();
      // 405: it exists already. 409 would mean a missing parent, which the previous round created.
      if (!response.ok && response.status !== 405) {
        throw new SnapshotAccessError(
          `cannot create the folder ${this.folderUrl(depth)} for snapshots: the server answered ${response.status} ${response.statusText}; fix the dir parameter of [snapshot.webdav] url or create the folder`,
        );
      }
    }
    this.folderReady = true;
  }

  /** PUT under a temporary name, then MOVE onto `name`: the old object stays until the new one is whole. */
  private async put(name: string, send: (temporary: URL, action: string) => Promise<Response>, signal?: AbortSignal): Promise<void> {
    await this.ensureFolder();
    const temporary = this.objectUrl(`${name}.tmp-${randomBytes(6).toString("hex")}`);
    try {
      const put = await send(temporary, `upload ${name}`);
      // 409: the folder is gone (removed by hand, say); the next try creates it again.
      if (put.status === 409) this.folderReady = false;
      if (!put.ok) throw await this.failure(put, `upload ${name}`);
      await put.body?.cancel();
      const move = await this.request("MOVE", temporary, `rename the upload of ${name}`, {
        headers: { Destination: this.objectUrl(name).toString(), Overwrite: "T" },
        signal,
      });
      if (!move.ok) throw await this.failure(move, `rename the upload of ${name}`);
      await move.body?.cancel();
    } catch (err) {
      await this.removeTemporary(temporary);
      // A server may still be writing what it got of a broken PUT when the first DELETE arrives, and keep it:
      // the later attempts remove it then.
      for (const delayMs of CLEANUP_RETRY_DELAYS_MS) {
        setTimeout(() => void this.removeTemporary(temporary), delayMs).unref();
      }
      throw err;
    }
  }

  private async removeTemporary(temporary: URL): Promise<void> {
    await this.request("DELETE", temporary, "remove an unfinished upload")
      .then((response) => response.body?.cancel())
      .catch(() => undefined);
  }

  async upload(name: string, localPath: string, options?: TransferOptions): Promise<void> {
    const total = statSync(localPath).size;
    await this.put(name, (temporary, action) => this.putFile(temporary, localPath, total, action, options ?? {}), options?.signal);
    this.logger.debug("snapshot object uploaded", { store: this.description, object: name, bytes: total });
  }

  async download(name: string, localPath: string, options?: TransferOptions): Promise<void> {
    const response = await this.request("GET", this.objectUrl(name), `download ${name}`, { signal: options?.signal });
    if (response.status === 404) {
      await response.body?.cancel();
      throw new SnapshotNotFoundError(`no object ${name} in ${this.description}`);
    }
    if (!response.ok || response.body === null) throw await this.failure(response, `download ${name}`);
    const length = Number(response.headers.get("content-length") ?? Number.NaN);
    try {
      await pipeline(
        Readable.fromWeb(response.body as WebReadableStream<Uint8Array>),
        progressCounter(options ?? {}, Number.isFinite(length) ? length : undefined),
        createWriteStream(localPath),
        { signal: options?.signal },
      );
    } catch (err) {
      if (options?.signal?.aborted) throw options.signal.reason;
      throw new SnapshotStoreError(`the download of ${name} from ${this.description} broke off: ${(err as Error).message}`, { cause: err });
    }
  }

  async writeSmall(name: string, content: Uint8Array): Promise<void> {
    await this.put(name, (temporary, action) => this.request("PUT", temporary, action, { body: content }));
  }

  async readSmall(name: string): Promise<Uint8Array | null> {
    const response = await this.request("GET", this.objectUrl(name), `read ${name}`);
    if (response.status === 404) {
      await response.body?.cancel();
      return null;
    }
    if (!response.ok) throw await this.failure(response, `read ${name}`);
    return new Uint8Array(await response.arrayBuffer());
  }

  async remove(name: string): Promise<void> {
    const response = await this.request("DELETE", this.objectUrl(name), `remove ${name}`);
    await response.body?.cancel();
    if (!response.ok && response.status !== 404) throw await this.failure(response, `remove ${name}`);
  }

  async close(): Promise<void> {}
}
