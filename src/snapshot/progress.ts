// Counts the bytes of a transfer as they stream through, for a store's onProgress callback.

import { Transform } from "node:stream";
import type { TransferOptions } from "./store.js";

/** A pass-through stream that reports the bytes that went through it so far (and the total, when known). */
export function progressCounter(options: TransferOptions, total: number | undefined): Transform {
  let bytes = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      bytes += chunk.length;
      options.onProgress?.({ bytes, ...(total === undefined ? {} : { total }) });
      callback(null, chunk);
    },
  });
}
