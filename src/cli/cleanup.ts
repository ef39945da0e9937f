// `marmot -cleanup`: remove every trigger and table marmot added, leaving the user's data as it was.

import type { Config } from "../config/types.js";
import type { Logger } from "../log.js";
import { removeCapture } from "../sqlite/cleanup.js";
import { openDatabase } from "../sqlite/open.js";

export function cleanupCommand(config: Config, logger: Logger): number {
  const db = openDatabase(config.dbPath, logger);
  try {
    removeCapture(db, logger);
  } finally {
    db.close();
  }
  logger.info("removed marmot's triggers and tables", { db: config.dbPath });
  return 0;
}
