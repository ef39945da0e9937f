// `marmot -config FILE`: run the node until SIGINT or SIGTERM.

import type { CliOptions, Config } from "../config/types.js";
import type { Logger } from "../log.js";
import { MarmotNode } from "../node.js";

export async function runCommand(config: Config, cli: CliOptions, logger: Logger): Promise<number> {
  const node = await MarmotNode.start(config, cli, logger);
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      logger.warn("second signal: exiting without waiting", { signal });
      process.exit(130);
    }
    logger.info("signal received; finishing in-flight work", { signal });
    void node.stop();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    await node.done;
    return 0;
  } catch {
    return 1;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
