// Serves the Prometheus metrics over HTTP on [prometheus] bind.

import { createServer, type Server } from "node:http";
import { ConfigError } from "./errors.js";
import type { Logger } from "./log.js";
import type { Metrics } from "./metrics.js";

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

export async function startMetricsServer(bind: string, metrics: Metrics, logger: Logger): Promise<Server> {
  const { host, port } = splitHostPort(bind);
  const server = createServer((req, res) => {
    if (req.url === "/metrics" || req.url === "/") {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
      res.end(metrics.render());
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address();
  logger.info("serving Prometheus metrics", { address: typeof address === "object" && address ? `${address.address}:${address.port}` : bind });
  return server;
}
