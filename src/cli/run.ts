// `marmot -config FILE`: run the node until SIGINT or SIGTERM.

import type { CliOptions, Config } from "../config/types.js";
import type { Logger } from "../log.js";
import { MarmotNode } from "../node.js";

const FORCE_AFTER_MS = 3000;

export async function runCommand(config: Config, cli: CliOptions, logger: Logger): Promise<number> {
  let node: MarmotNode | undefined;
  let firstSignalAt = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    const now = Date.now();
    if (firstSignalAt === 0) {
      firstSignalAt = now;
      logger.info("signal received; finishing in-flight work", { signal });
      void node?.stop();
      return;
    }
    // Ctrl-C reaches every process of the terminal's group and a wrapper script often sends its own signal
    // right after: only a signal well after the first one means "do not wait".
    if (now - firstSignalAt < FORCE_AFTER_MS) return;
    logger.warn("signal received again: exiting without waiting", { signal });
    node?.killEmbeddedServer();
    process.exit(130);
  };
  // Listening before the start: a signal that comes while marmot starts (or waits for NATS) stops it cleanly too.
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    try {
      await MarmotNode.start(config, cli, logger, (created) => (node = created));
    } catch (err) {
      if (node?.stopRequested && firstSignalAt !== 0) return 0;
      throw err;
    }
    try {
      await node!.done;
      return 0;
    } catch {
      return 1;
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
