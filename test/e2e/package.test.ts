// The package as a user installs it: `npm pack`, then `npm install -g` of the tarball into a scratch prefix, and
// the installed `marmot` runs from any folder (its better-sqlite3 built by that install).

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { repoRoot } from "../helpers/marmot.js";
import { createDb, removeTempDirs, sqlite3, tempDir } from "../helpers/sqlite.js";

after(removeTempDirs);

const version = (JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as { version: string }).version;

function run(command: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number }) {
  const result = spawnSync(command, args, {
    encoding: "utf8",
    cwd: options.cwd,
    env: options.env ?? process.env,
    timeout: options.timeoutMs ?? 60_000,
  });
  return { status: result.status, out: `${result.stdout ?? ""}${result.stderr ?? ""}${result.error ? String(result.error) : ""}` };
}

describe("the npm package", () => {
  test("packs, installs globally from the tarball, and its marmot command works from any folder", { timeout: 20 * 60_000 }, () => {
    const dir = tempDir("marmot-package-");
    // The code is built already (npm test builds first): packing without `prepare` leaves dist/ alone while
    // other test files may be running from it.
    const packed = run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", dir], { cwd: repoRoot });
    assert.equal(packed.status, 0, packed.out);
    const tarball = readdirSync(dir).find((f) => f.endsWith(".tgz"));
    assert.ok(tarball, `npm pack wrote no tarball: ${packed.out}`);
    const files = (JSON.parse(packed.out.slice(packed.out.indexOf("["))) as [{ files: { path: string }[] }])[0].files.map((f) => f.path);
    assert.ok(files.includes("dist/src/index.js") && files.includes("dist/src/index.d.ts") && files.includes("bin/marmot"), files.join("\n"));
    assert.deepEqual(
      files.filter((f) => /^(test|bench|src)\/|^dist\/(test|bench)\/|\.map$/.test(f)),
      [],
      "tests, benchmarks and sources stay out of the package",
    );

    // As a user installs it: better-sqlite3 compiles for this Node. Its prebuilt binaries are not in the npm
    // registry, so it goes straight to the compiler; the packages come from npm's cache when it has them.
    const prefix = join(dir, "prefix");
    const installed = run("npm", ["install", "-g", "--prefix", prefix, "--prefer-offline", "--no-audit", "--no-fund", join(dir, tarball)], {
      cwd: dir,
      env: { ...process.env, npm_config_build_from_source: "true", JOBS: "max" },
      timeoutMs: 19 * 60_000,
    });
    assert.equal(installed.status, 0, installed.out);

    const elsewhere = join(dir, "elsewhere");
    mkdirSync(elsewhere);
    const env = { ...process.env, PATH: `${join(prefix, "bin")}:${process.env.PATH}` };
    const shown = run("marmot", ["-version"], { cwd: elsewhere, env });
    assert.equal(shown.status, 0, shown.out);
    assert.equal(shown.out.trim(), `marmot ${version}`);
    const help = run("marmot", ["-help"], { cwd: elsewhere, env });
    assert.equal(help.status, 0, help.out);
    assert.match(help.out, /^Usage: marmot -config FILE/);

    // The installed command opens a real database (the compiled better-sqlite3): -cleanup on the app's file.
    const db = createDb(join(elsewhere, "app.db"), "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes VALUES (1, 'kept');");
    writeFileSync(join(elsewhere, "config.toml"), `db_path = ${JSON.stringify(db)}\n`);
    const cleaned = run("marmot", ["-config", "config.toml", "-cleanup"], { cwd: elsewhere, env });
    assert.equal(cleaned.status, 0, cleaned.out);
    assert.equal(sqlite3(db, "SELECT body FROM notes;").trim(), "kept");

    // And the library entry loads by the package's name from an app beside it.
    const app = join(elsewhere, "app.mjs");
    writeFileSync(app, 'import { startMarmot, ConfigError } from "marmot-ts";\nconsole.log(typeof startMarmot, ConfigError.name);\n');
    mkdirSync(join(elsewhere, "node_modules"));
    const linked = run("ln", ["-s", join(prefix, "lib", "node_modules", "marmot-ts"), join(elsewhere, "node_modules", "marmot-ts")], {
      cwd: elsewhere,
    });
    assert.equal(linked.status, 0, linked.out);
    const imported = run(process.execPath, [app], { cwd: elsewhere, env });
    assert.equal(imported.out.trim(), "function ConfigError", imported.out);
    assert.equal(existsSync(join(prefix, "lib", "node_modules", "marmot-ts", "dist", "test")), false);
  });
});
