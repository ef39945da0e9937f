// The marmot executable: parse flags, load the config, and run the chosen command.

import { ConfigError } from "../errors.js";
import { type LoadedConfig, loadConfig } from "../config/load.js";
import type { CliOptions } from "../config/types.js";
import { checkDatabaseFile } from "../config/validate.js";
import { createLogger } from "../logger.js";
import { parseArgs } from "./args.js";
import { cleanupCommand } from "./cleanup.js";
import { parkedCommand } from "./parked.js";
import { statusCommand } from "./status.js";
import { runCommand } from "./run.js";
import { saveSnapshotCommand } from "./save-snapshot.js";
import { usage } from "./usage.js";
import { marmotVersion } from "../version.js";

export async function main(argv: string[]): Promise<number> {
  let cli: CliOptions;
  let loaded: LoadedConfig;
  try {
    cli = parseArgs(argv);
    if (cli.help) {
      process.stdout.write(usage());
      return 0;
    }
    if (cli.version) {
      process.stdout.write(`marmot ${marmotVersion()}\n`);
      return 0;
    }
    loaded = loadConfig(cli.configPath || undefined);
    checkDatabaseFile(loaded.config.dbPath);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`marmot: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const { config, warnings } = loaded;
  const logger = createLogger(config.logging);
  for (const w of warnings) logger.warn(w);
  try {
    if (cli.cleanup) return cleanupCommand(config, logger);
    if (cli.status) return await statusCommand(config, logger);
    if (cli.parked) return await parkedCommand(config, cli, logger);
    if (cli.saveSnapshot) return await saveSnapshotCommand(config, cli, logger);
    return await runCommand(config, cli, logger);
  } catch (err) {
    const e = err as Error;
    logger.error(e.message, { error: e.name });
    if (config.logging.verbose && e.stack) logger.debug(e.stack);
    return 1;
  }
}

const code = await main(process.argv.slice(2));
process.exitCode = code;
// Exit even if a library left a timer or socket behind: marmot has stopped what it started.
setTimeout(() => process.exit(code), 200).unref();
