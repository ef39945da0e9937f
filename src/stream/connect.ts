// Opens the NATS connection: credentials and TLS from [nats], patient first connect, reconnect forever after.

import { accessSync, constants, readFileSync } from "node:fs";
import { createConnection, isIP } from "node:net";
import { connect as tlsConnect } from "node:tls";
import {
  AuthorizationError,
  connect,
  nkeyAuthenticator,
  nkeys,
  UserAuthenticationExpiredError,
  type Authenticator,
  type NatsConnection,
  type NodeConnectionOptions,
  type Status,
} from "@nats-io/transport-node";
import type { NatsConfig } from "../config/types.js";
import { NatsError } from "../errors.js";
import type { Logger } from "../log.js";
import { sleep } from "../sleep.js";

export interface ConnectNatsOptions {
  /** server URLs: [nats] urls, or the embedded server's client URL */
  servers: string[];
  nats: NatsConfig;
  /** the client name the server shows in its monitoring, e.g. "marmot-node-1" */
  name: string;
  logger: Logger;
  /** aborting stops the wait for a server that is not there yet; connectNats then throws signal.reason */
  signal?: AbortSignal;
}

const FIRST_RETRY_MS = 250;
const MAX_RETRY_MS = 5000;
const WAIT_LOG_INTERVAL_MS = 30_000;
// Long enough for a TLS handshake across a WAN, short enough that a server that never answers is noticed.
const HANDSHAKE_TIMEOUT_MS = 5000;

/**
 * Connects to NATS. Waits (with backoff, logging what it waits for) while no server answers; fails at once
 * with a NatsError when a server answers but refuses us (credentials, TLS, bad URL), since waiting cannot fix that.
 */
export async function connectNats(options: ConnectNatsOptions): Promise<NatsConnection> {
  const { nats, logger, signal } = options;
  const servers = parseServers(options.servers);
  const where = `NATS at ${servers.map((s) => s.dial).join(", ")}`;
  const credentials = describeCredentials(nats, servers);
  const connectOptions = buildConnectOptions(options, servers, logger);

  const startedAt = Date.now();
  let attempt = 0;
  let lastLoggedAt = 0;
  for (;;) {
    signal?.throwIfAborted();
    attempt++;
    let failure: unknown;
    try {
      const nc = await abortable(connect(connectOptions), signal);
      const waited = attempt > 1 ? ` after ${Math.round((Date.now() - startedAt) / 1000)} s` : "";
      logger.info(`connected to NATS at ${nc.getServer()}${waited}`, { client: options.name });
      watchConnection(nc, logger, nats.reconnectWaitSeconds);
      return nc;
    } catch (err) {
      if (signal?.aborted) {
        throw signal.reason;
      }
      failure = err;
    }

    const permanent = await permanentProblem(failure, where, servers, nats, credentials);
    if (permanent !== undefined) {
      throw new NatsError(permanent, { cause: failure });
    }
    const now = Date.now();
    if (attempt === 1 || now - lastLoggedAt >= WAIT_LOG_INTERVAL_MS) {
      lastLoggedAt = now;
      const since = attempt === 1 ? "" : ` (still waiting after ${Math.round((now - startedAt) / 1000)} s, ${attempt} attempts)`;
      logger.warn(`waiting for ${where}: ${describeTransient(failure)}${since}`);
    }
    await sleep(Math.min(FIRST_RETRY_MS * 2 ** Math.min(attempt - 1, 10), MAX_RETRY_MS), signal);
  }
}

interface ServerUrl {
  /** what the client dials and logs show: credentials removed */
  dial: string;
  host: string;
  port: number;
  tls: boolean;
  user: string;
  pass: string;
}

function parseServers(urls: string[]): ServerUrl[] {
  if (urls.length === 0) {
    throw new NatsError("no NATS server URL to connect to: set [nats] urls, or leave it empty to run the embedded server");
  }
  return urls.map((raw) => {
    const text = raw.trim();
    const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `nats://${text}`;
    let url: URL;
    try {
      url = new URL(withScheme);
    } catch {
      throw new NatsError(`"${redact(raw)}" in [nats] urls is not a NATS URL: write it as nats://host:4222`);
    }
    const scheme = url.protocol.replace(/:$/, "");
    if (scheme !== "nats" && scheme !== "tls") {
      throw new NatsError(`"${redact(raw)}" in [nats] urls uses ${scheme}://, which marmot cannot dial: use nats:// or tls://`);
    }
    if (url.hostname === "") {
      throw new NatsError(`"${redact(raw)}" in [nats] urls has no host: write it as nats://host:4222`);
    }
    const port = url.port === "" ? 4222 : Number(url.port);
    const dial = `${scheme}://${url.host}${url.port === "" ? ":4222" : ""}`;
    return {
      dial,
      host: url.hostname.replace(/^\[|\]$/g, ""),
      port,
      tls: scheme === "tls",
      user: decodeURIComponent(url.username),
      pass: decodeURIComponent(url.password),
    };
  });
}

function buildConnectOptions(options: ConnectNatsOptions, servers: ServerUrl[], logger: Logger): NodeConnectionOptions {
  const { nats } = options;
  const connectOptions: NodeConnectionOptions = {
    servers: servers.map((s) => s.dial),
    name: options.name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: nats.reconnectWaitSeconds > 0 ? nats.reconnectWaitSeconds * 1000 : 2000,
    timeout: HANDSHAKE_TIMEOUT_MS,
  };

  const authenticators: Authenticator[] = [];
  if (nats.seedFile !== "") {
    const seed = readSeed(nats.seedFile);
    logger.info("authenticating to NATS with the nkey from [nats] seed_file", {
      seedFile: nats.seedFile,
      publicKey: nkeys.fromSeed(seed).getPublicKey(),
    });
    authenticators.push(nkeyAuthenticator(seed));
  }
  if (nats.userName !== "") {
    connectOptions.user = nats.userName;
    connectOptions.pass = nats.userPassword;
  } else {
    // The v3 client ignores credentials in a URL; marmot's users put them there, so honour them.
    const withUser = servers.find((s) => s.user !== "");
    if (withUser !== undefined && withUser.pass !== "") {
      connectOptions.user = withUser.user;
      connectOptions.pass = withUser.pass;
    } else if (withUser !== undefined) {
      connectOptions.token = withUser.user;
    }
  }
  if (authenticators.length > 0) {
    connectOptions.authenticator = authenticators;
  }

  const wantsTls = nats.caFile !== "" || nats.certFile !== "" || nats.keyFile !== "" || servers.some((s) => s.tls);
  if (wantsTls) {
    if ((nats.certFile === "") !== (nats.keyFile === "")) {
      throw new NatsError("[nats] cert_file and key_file go together (a client certificate needs its key): set both or neither");
    }
    connectOptions.tls = {
      ...(nats.caFile !== "" ? { caFile: checkReadable(nats.caFile, "ca_file") } : {}),
      ...(nats.certFile !== "" ? { certFile: checkReadable(nats.certFile, "cert_file") } : {}),
      ...(nats.keyFile !== "" ? { keyFile: checkReadable(nats.keyFile, "key_file") } : {}),
    };
  }
  return connectOptions;
}

function readSeed(seedFile: string): Uint8Array {
  let text: string;
  try {
    text = readFileSync(seedFile, "utf8");
  } catch (err) {
    throw new NatsError(`cannot read [nats] seed_file ${seedFile}: ${(err as Error).message}`, { cause: err });
  }
  // A bare seed, or one decorated as in a .creds file: the user seed is the 58-character word starting "SU".
  const match = /\bSU[A-Z2-7]{56}\b/.exec(text);
  if (match === null) {
    throw new NatsError(
      `[nats] seed_file ${seedFile} holds no user nkey seed (a 58-character word starting with SU): ` +
        "generate one with `nk -gen user` and put the seed in that file",
    );
  }
  const seed = new TextEncoder().encode(match[0]);
  try {
    nkeys.fromSeed(seed);
  } catch (err) {
    throw new NatsError(`the nkey seed in [nats] seed_file ${seedFile} is damaged (${(err as Error).message}): regenerate it`, {
      cause: err,
    });
  }
  return seed;
}

function checkReadable(path: string, key: string): string {
  try {
    accessSync(path, constants.R_OK);
  } catch (err) {
    throw new NatsError(`cannot read [nats] ${key} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
      cause: err,
    });
  }
  return path;
}

/** Which config keys to point at when a server rejects our credentials. */
function describeCredentials(nats: NatsConfig, servers: ServerUrl[]): string {
  const keys: string[] = [];
  if (nats.seedFile !== "") {
    keys.push("[nats] seed_file");
  }
  if (nats.userName !== "") {
    keys.push("[nats] user_name / user_password");
  } else if (servers.some((s) => s.user !== "")) {
    keys.push("the credentials in [nats] urls");
  }
  return keys.length > 0
    ? `check ${keys.join(" and ")}`
    : "the server requires credentials and none are configured: set [nats] user_name / user_password or seed_file";
}

/** The message for a failure that retrying cannot fix, or undefined when it is worth waiting. */
async function permanentProblem(
  err: unknown,
  where: string,
  servers: ServerUrl[],
  nats: NatsConfig,
  credentials: string,
  depth = 0,
): Promise<string | undefined> {
  if (err instanceof AuthorizationError || err instanceof UserAuthenticationExpiredError) {
    return `${where} rejected the credentials (${err.message}): ${credentials}`;
  }
  const error = err instanceof Error ? err : new Error(String(err));
  // The client wraps some socket and TLS errors (ConnectionError with a cause): look through the chain.
  const chain = causeChain(error);
  const code = chain.map((e) => (e as NodeJS.ErrnoException).code).find((c) => typeof c === "string" && c !== "") ?? "";
  const message = chain.at(-1)!.message;
  if (/authorization violation|authentication/i.test(message)) {
    return `${where} rejected the credentials (${message}): ${credentials}`;
  }
  if (/ALERT_CERTIFICATE_REQUIRED|ALERT_BAD_CERTIFICATE|ALERT_UNKNOWN_CA|ALERT_CERTIFICATE_UNKNOWN|ALERT_UNSUPPORTED_CERT/.test(code)) {
    return nats.certFile === ""
      ? `${where} requires a TLS client certificate and none is configured: set [nats] cert_file and key_file`
      : `${where} refused this node's TLS client certificate [nats] cert_file ${nats.certFile} (${shortTlsMessage(message)}): ` +
          "it must be signed by a CA in the server's tls ca_file and allow client authentication";
  }
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
    return (
      `${where}: the server's TLS certificate does not name the host we dialled (${message}): ` +
      "list the server by a name or IP its certificate holds in [nats] urls, or reissue the certificate"
    );
  }
  if (/CERT|UNABLE_TO_|SELF_SIGNED/.test(code)) {
    const caHint =
      nats.caFile === ""
        ? "set [nats] ca_file to the CA certificate that signed the server's certificate"
        : `[nats] ca_file ${nats.caFile} is not the CA that signed the server's certificate: point it at that CA`;
    return `${where} presented a TLS certificate this node does not trust (${message}): ${caHint}`;
  }
  if (/^ERR_SSL_|^ERR_TLS_|^ERR_OSSL_/.test(code) || /ssl|tls alert|handshake/i.test(message)) {
    return `${where}: TLS failed (${message}): check [nats] ca_file, cert_file and key_file, and the server's tls block`;
  }
  if (/does not support 'tls'|tls is not available/i.test(message)) {
    return (
      `${where} does not offer TLS, but TLS was asked for ([nats] ca_file / cert_file / key_file or a tls:// URL): ` +
      "enable TLS on the server, or remove those settings"
    );
  }
  if (code === "ERR_INVALID_URL" || error.name === "InvalidArgumentError") {
    return `${where}: ${message}: check [nats] urls`;
  }
  if (error.name === "TimeoutError" && depth === 0) {
    // The client misses the alert a server sends when it refuses our client certificate after a TLS 1.3
    // handshake, and waits out its timeout instead: repeat the handshake by hand to see the refusal.
    const refusal = await clientCertificateRefusal(servers, nats);
    if (refusal !== undefined) {
      return (await permanentProblem(refusal, where, servers, nats, credentials, depth + 1)) ?? refusal.message;
    }
  }
  return undefined;
}

/** Handshakes by hand with each TLS server that verifies clients; returns the first refusal seen. */
async function clientCertificateRefusal(servers: ServerUrl[], nats: NatsConfig): Promise<Error | undefined> {
  const refusals = await Promise.all(
    servers.map(async (server) => {
      const info = await readServerInfo(server.host, server.port, 2000).catch(() => undefined);
      if (info?.tls_verify !== true) {
        return undefined;
      }
      return tlsRefusal(server, nats).catch(() => undefined);
    }),
  );
  return refusals.find((r) => r !== undefined);
}

function tlsRefusal(server: ServerUrl, nats: NatsConfig): Promise<Error | undefined> {
  return new Promise((resolveRefusal) => {
    const socket = createConnection({ host: server.host, port: server.port });
    let done = false;
    const finish = (result: Error | undefined) => {
      if (!done) {
        done = true;
        clearTimeout(deadline);
        socket.destroy();
        resolveRefusal(result);
      }
    };
    // A server that says nothing for 3 s neither refused nor accepted: nothing to report.
    const deadline = setTimeout(() => finish(undefined), 3000);
    socket.on("error", () => finish(undefined));
    socket.once("data", () => {
      // The server's INFO has arrived: it now expects the TLS handshake. Its certificate is not in question here.
      const secure = tlsConnect({
        socket,
        rejectUnauthorized: false,
        ...(isIP(server.host) === 0 ? { servername: server.host } : {}),
        ...(nats.certFile !== "" ? { cert: readFileSync(nats.certFile), key: readFileSync(nats.keyFile) } : {}),
      });
      secure.on("error", (err) => finish(err));
      secure.on("close", () => finish(undefined));
      // Accepted if no alert follows the handshake within a moment.
      secure.on("secureConnect", () => setTimeout(() => finish(undefined), 1000));
    });
  });
}

/** OpenSSL messages carry source paths and numbers; keep the words a person can search for. */
function shortTlsMessage(message: string): string {
  const alert = /(sslv3|tlsv1[0-3]?) alert [a-z ]+/i.exec(message);
  return alert !== null ? alert[0] : message;
}

function causeChain(err: Error): Error[] {
  const chain = [err];
  for (let cause = err.cause; cause instanceof Error && chain.length < 5; cause = cause.cause) {
    chain.push(cause);
  }
  return chain;
}

function describeTransient(err: unknown): string {
  if (!(err instanceof Error)) {
    return String(err);
  }
  if (err.name === "TimeoutError") {
    return `no answer within ${HANDSHAKE_TIMEOUT_MS / 1000} s`;
  }
  const cause = err.cause instanceof Error ? err.cause.message : "";
  return cause !== "" && cause !== err.message ? `${err.message} (${cause})` : err.message;
}

/** The INFO a NATS server sends to every new connection, read without speaking the rest of the protocol. */
export function readServerInfo(host: string, port: number, timeoutMs: number): Promise<Record<string, unknown>> {
  return new Promise((resolveInfo, rejectInfo) => {
    const socket = createConnection({ host, port });
    let received = "";
    const finish = (result: Record<string, unknown> | Error) => {
      socket.destroy();
      if (result instanceof Error) {
        rejectInfo(result);
      } else {
        resolveInfo(result);
      }
    };
    socket.setTimeout(timeoutMs, () => finish(new Error(`no INFO from ${host}:${port} within ${timeoutMs} ms`)));
    socket.on("error", (err) => finish(err));
    socket.on("end", () => finish(new Error(`${host}:${port} closed the connection before sending INFO`)));
    socket.on("data", (chunk) => {
      received += chunk.toString("utf8");
      const end = received.indexOf("\r\n");
      if (end < 0) {
        return;
      }
      const line = received.slice(0, end);
      if (!line.startsWith("INFO ")) {
        finish(new Error(`${host}:${port} is not a NATS server (it said ${JSON.stringify(line.slice(0, 40))})`));
        return;
      }
      try {
        finish(JSON.parse(line.slice(5)) as Record<string, unknown>);
      } catch (err) {
        finish(err as Error);
      }
    });
  });
}

/** Logs the connection's life after the first connect: the client reconnects on its own, forever. */
function watchConnection(nc: NatsConnection, logger: Logger, reconnectWaitSeconds: number): void {
  void (async () => {
    for await (const status of nc.status()) {
      logStatus(status, logger, reconnectWaitSeconds);
    }
  })().catch((err: unknown) => logger.debug(`stopped watching the NATS connection: ${String(err)}`));
  void nc.closed().then((err) => {
    if (err) {
      logger.error(`the NATS connection closed and will not reconnect: ${err.message}`);
    } else {
      logger.debug("NATS connection closed");
    }
  });
}

function logStatus(status: Status, logger: Logger, reconnectWaitSeconds: number): void {
  switch (status.type) {
    case "disconnect":
      logger.warn(`lost the connection to NATS at ${status.server}; reconnecting every ${reconnectWaitSeconds || 2} s until it is back`);
      break;
    case "reconnect":
      logger.info(`reconnected to NATS at ${status.server}`);
      break;
    case "reconnecting":
      logger.debug("trying to reconnect to NATS");
      break;
    case "ldm":
      logger.warn(`NATS server ${status.server} is entering lame duck mode; the client will move to another server`);
      break;
    case "error":
      logger.warn(`NATS server reported an error: ${status.error.message}`);
      break;
    case "staleConnection":
      logger.warn("the NATS connection went stale (pings unanswered); reconnecting");
      break;
    case "slowConsumer":
      logger.warn(`a NATS subscription is falling behind (${status.pending} messages pending)`, { subject: status.sub.getSubject() });
      break;
    case "update":
      logger.debug("NATS cluster membership changed", { added: status.added, deleted: status.deleted });
      break;
    default:
      break;
  }
}

function redact(url: string): string {
  return url.replace(/\/\/[^@/]*@/, "//***@");
}

async function abortable<T extends { close(): Promise<void> }>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) {
    return work;
  }
  signal.throwIfAborted();
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([work, aborted]);
  } catch (err) {
    // A connection that completes after the abort must not linger open.
    void work.then((late) => late.close()).catch(() => {});
    throw err;
  } finally {
    signal.removeEventListener("abort", onAbort!);
  }
}
