// `marmot -config FILE -save-snapshot`: save one snapshot of the database into the configured store, then exit.

import { mkdirSync } from "node:fs";
import type { NatsConnection } from "@nats-io/transport-node";
import type { CliOptions, Config } from "../config/types.js";
import { ConfigError } from "../errors.js";
import type { Logger } from "../log.js";
import { embeddedServerOptions } from "../node.js";
import { openSnapshotStore } from "../snapshot/open-store.js";
import { saveSnapshot } from "../snapshot/save.js";
import type { SnapshotStore, TransferProgress } from "../snapshot/store.js";
import { openDatabase } from "../sqlite/open.js";
import { connectNats } from "../stream/connect.js";
import { EmbeddedServer, runningServerPid } from "../stream/embedded-server.js";
import { waitForJetStream } from "../stream/jetstream-ready.js";

const PROGRESS_EVERY_MS = 250;

/**
 * Saves a snapshot and prints what, where and how large. Only the nats store needs NATS: with [nats] urls it
 * connects there; without, it starts the node's embedded nats-server for the save, as the node would. That server
 * must not run twice on one store, so while this node's marmot runs (its server is up), the command refuses: the
 * running node saves snapshots itself ([snapshot] enabled, interval), or give [nats] urls to reach its server.
 */
export async function saveSnapshotCommand(config: Config, cli: CliOptions, logger: Logger): Promise<number> {
  const abort = new AbortController();
  const onSignal = () => abort.abort(new Error("-save-snapshot interrupted by a signal"));
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  const db = openDatabase(config.dbPath, logger);
  let server: EmbeddedServer | undefined;
  let nc: NatsConnection | undefined;
  let store: SnapshotStore | undefined;
  try {
    if (config.snapshot.store === "nats") {
      let servers = config.nats.urls;
      if (servers.length === 0) {
        const options = embeddedServerOptions(config, cli);
        const running = runningServerPid(options.storeDir);
        if (running !== undefined) {
          throw new ConfigError(
            `the embedded nats-server of node ${config.nodeId} is running (pid ${running}, store ${options.storeDir}): this node's marmot ` +
              "is running, and a second server on its store would stop it. The running node saves snapshots itself ([snapshot] enabled, " +
              "interval); to save one by hand, stop marmot first, or set [nats] urls to the running server's address",
          );
        }
        mkdirSync(options.storeDir, { recursive: true });
        server = await EmbeddedServer.start(options, logger.child({ component: "nats-server" }));
        servers = [server.clientUrl];
      }
      nc = await connectNats({ servers, nats: config.nats, name: `marmot-save-snapshot-${config.nodeId}`, logger, signal: abort.signal });
      await waitForJetStream(nc, logger, abort.signal);
    }
    store = openSnapshotStore(config, { nc, logger });
    const progress = process.stderr.isTTY ? terminalProgress() : undefined;
    const manifest = await saveSnapshot(db, { config, store, logger, signal: abort.signal, onProgress: progress?.update });
    progress?.done();
    const streams = Object.entries(manifest.streams)
      .map(([stream, seq]) => `${stream}@${seq}`)
      .join(", ");
    process.stdout.write(
      `saved snapshot ${manifest.object} to ${store.description}: ${formatBytes(manifest.size)} (${manifest.size} bytes), ` +
        `${manifest.tables} tables, streams ${streams}, sha256 ${manifest.sha256}\n`,
    );
    return 0;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await store?.close().catch(() => undefined);
    await nc?.drain().catch(() => undefined);
    await server?.stop();
    db.close();
  }
}

/** One line on the terminal, rewritten as the upload goes on and ended once the whole object is up. */
function terminalProgress(): { update: (p: TransferProgress) => void; done: () => void } {
  let shownAt = 0;
  let open = false;
  const show = (p: TransferProgress) => {
    const of = p.total === undefined ? "" : ` of ${formatBytes(p.total)} (${Math.floor((100 * p.bytes) / Math.max(p.total, 1))}%)`;
    process.stderr.write(`\ruploading snapshot: ${formatBytes(p.bytes)}${of}\u001b[K`);
    open = true;
  };
  const done = () => {
    if (open) process.stderr.write("\n");
    open = false;
  };
  return {
    update(p) {
      const complete = p.total !== undefined && p.bytes >= p.total;
      const now = Date.now();
      if (!complete && now - shownAt < PROGRESS_EVERY_MS) return;
      shownAt = now;
      show(p);
      // Ended before the log line that follows the upload, so the two do not share a line.
      if (complete) done();
    },
    done,
  };
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}
