// Finds the nats-server executable that marmot starts when no external NATS is configured.

import { accessSync, constants, statSync } from "node:fs";
import { delimiter, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ServerError } from "../errors.js";

const BINARY_NAME = "nats-server";

// Debian installs nats-server into /usr/sbin, which a non-root user's PATH often lacks.
const EXTRA_DIRS = ["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"];

/**
 * Where scripts/setup.sh puts nats-server 2.10 when the machine's own is older (this file runs from
 * dist/src/stream/ of the checkout).
 */
const CHECKOUT_BINARY = fileURLToPath(new URL(`../../../.tools/bin/${BINARY_NAME}`, import.meta.url));

/**
 * Absolute path of nats-server: $MARMOT_NATS_SERVER if set, else the one scripts/setup.sh installed into the
 * checkout, else PATH, else the usual sbin/bin folders.
 */
export function findNatsServer(): string {
  const override = process.env.MARMOT_NATS_SERVER;
  if (override !== undefined && override !== "") {
    const candidate = isAbsolute(override) ? override : resolve(override);
    if (!isExecutableFile(candidate)) {
      throw new ServerError(
        `MARMOT_NATS_SERVER is set to ${override}, but that is not an executable file. ` +
          "Point it at a nats-server binary, or unset it to search PATH and /usr/sbin",
      );
    }
    return candidate;
  }
  if (isExecutableFile(CHECKOUT_BINARY)) return CHECKOUT_BINARY;
  const pathDirs = (process.env.PATH ?? "").split(delimiter).filter((dir) => dir !== "");
  for (const dir of [...pathDirs, ...EXTRA_DIRS]) {
    const candidate = join(dir, BINARY_NAME);
    if (isExecutableFile(candidate)) {
      return isAbsolute(candidate) ? candidate : resolve(candidate);
    }
  }
  throw new ServerError(
    "nats-server not found on PATH or in /usr/sbin. Install it: `apt-get install nats-server` (Debian), " +
      "or run scripts/setup.sh from the marmot checkout, or set [nats] urls to use an existing cluster",
  );
}

function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) {
      return false;
    }
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
