// Byte counting for streamed transfers: the stores report progress without holding what passes through.

import { Transform } from "node:stream";
import type { TransferOptions } from "../store.js";

/** A pass-through stream that reports the bytes seen so far to `options.onProgress` (nothing when absent). */
export function progressCounter(options: TransferOptions | undefined, total?: number): Transform {
  let bytes = 0;
  const onProgress = options?.onProgress;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      bytes += chunk.length;
      onProgress?.({ bytes, total });
      done(null, chunk);
    },
  });
}
