// The HTTP listener of [prometheus] bind: /metrics, and the status page, /status and /readyz, views of cluster/.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Readiness } from "../cluster/node-status.js";
import type { ClusterStatus } from "../cluster/status-model.js";
import { ConfigError } from "../errors.js";
import type { Logger } from "../log.js";
import type { Metrics } from "../metrics.js";
import { statusPage } from "./page.js";

/** What the endpoints show; the node's status tracker provides it. */
export interface StatusView {
  clusterStatus(): ClusterStatus;
  readiness(): Readiness;
}

/** Split "host:port" (host may be empty: all interfaces, as Go's net.Listen reads ":3010"). */
export function splitHostPort(bind: string): { host: string | undefined; port: number } {
  const at = bind.lastIndexOf(":");
  const host = at > 0 ? bind.slice(0, at).replace(/^\[|\]$/g, "") : undefined;
  const port = Number(bind.slice(at + 1));
  if (at < 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ConfigError(`[prometheus] bind must be "host:port", got ${JSON.stringify(bind)}`);
  }
  return { host, port };
}

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { "content-type": contentType, "cache-control": "no-store" });
  res.end(body);
}

function route(req: IncomingMessage, res: ServerResponse, metrics: Metrics, view: StatusView): void {
  const path = new URL(req.url ?? "/", "http://localhost").pathname;
  if (req.method !== "GET" && req.method !== "HEAD") {
    send(res, 405, "text/plain; charset=utf-8", "only GET\n");
    return;
  }
  switch (path) {
    case "/metrics":
      send(res, 200, "text/plain; version=0.0.4", metrics.render());
      return;
    case "/":
      send(res, 200, "text/html; charset=utf-8", statusPage());
      return;
    case "/status":
      send(res, 200, "application/json", JSON.stringify(view.clusterStatus()));
      return;
    case "/readyz": {
      const readiness = view.readiness();
      send(res, readiness.ready ? 200 : 503, "application/json", `${JSON.stringify(readiness)}\n`);
      return;
    }
    default:
      send(res, 404, "text/plain; charset=utf-8", "not found: try /, /status, /readyz or /metrics\n");
  }
}

export async function startHttpServer(bind: string, metrics: Metrics, view: StatusView, logger: Logger): Promise<Server> {
  const { host, port } = splitHostPort(bind);
  const server = createServer((req, res) => {
    try {
      route(req, res, metrics, view);
    } catch (err) {
      send(res, 500, "text/plain; charset=utf-8", `${(err as Error).message}\n`);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => {
      const why = err.code === "EADDRINUSE" ? "is in use (another marmot, or another program?)" : `cannot be listened on: ${err.message}`;
      reject(new ConfigError(`[prometheus] bind ${JSON.stringify(bind)} ${why}; choose another address or stop what holds it`, { cause: err }));
    });
    server.listen(port, host, () => resolve());
  });
  const address = server.address();
  logger.info("serving the status page, /status, /readyz and Prometheus metrics", {
    address: typeof address === "object" && address ? `${address.address}:${address.port}` : bind,
  });
  return server;
}
