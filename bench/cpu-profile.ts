// Optional: CPU-profiles every marmot process of a benchmark run (Node 20 refuses --cpu-prof in NODE_OPTIONS, --import it is).
//
//   npm run build
//   MARMOT_PROFILE_DIR=/tmp/prof NODE_OPTIONS=--import=./dist/bench/cpu-profile.js node dist/bench/run.js --only T1
//
// Each marmot writes marmot-<pid>.cpuprofile when it exits (open it in Chrome DevTools); other processes are untouched.

import { writeFileSync } from "node:fs";
import { Session } from "node:inspector";
import { join } from "node:path";

const dir = process.env.MARMOT_PROFILE_DIR;
if (dir && (process.argv[1] ?? "").endsWith("bin/marmot")) {
  const session = new Session();
  session.connect();
  session.post("Profiler.enable");
  session.post("Profiler.setSamplingInterval", { interval: 200 });
  session.post("Profiler.start");
  // A session on this thread answers synchronously, so the profile is written before the process is gone.
  process.on("exit", () => {
    session.post("Profiler.stop", (err, result) => {
      if (!err) writeFileSync(join(dir, `marmot-${process.pid}.cpuprofile`), JSON.stringify(result.profile));
    });
  });
}
