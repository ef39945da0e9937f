#!/usr/bin/env bash
# Builds marmot and runs its unit and integration tests on Node.js 22 and 24 too (the machine's own node, 20 or
# newer, runs the whole suite in `npm test`). Each runtime comes from the npm registry (the `node` package) and gets
# its own node_modules, because better-sqlite3 is a native addon built for one Node ABI; both are kept under
# .tools/node<version>/ so a second run only builds and tests. MARMOT_NODE_VERSIONS="22 24.18" picks the versions
# (as `npm install node@<version>` takes them).
#
# 24 stays at 24.18: from 24.19 on, Node aborts the process when it collects an object of an addon built on
# node::ObjectWrap, as better-sqlite3 12 is ("Assertion failed: (env) != nullptr" in Statement::~Statement, seen
# here on 24.21.0 in the restart and security tests). better-sqlite3 13 does not use it, but does not run on Node 20.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
versions=(${MARMOT_NODE_VERSIONS:-22 24.18})

# Installs node@$1 into .tools/node$1/runtime unless a matching version is there already.
install_runtime() {
  local version=$1 dir=.tools/node$1/runtime
  if [ -x "$dir/node_modules/.bin/node" ] && "$dir/node_modules/.bin/node" --version | grep -q "^v$version\."; then return 0; fi
  echo "node-versions: installing node@$version from the npm registry"
  rm -rf "$dir"
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "node@$version" >/dev/null
}

# The folder holding that runtime's headers (node-gyp reads them there instead of downloading them).
headers_dir() {
  local found
  found=$(find ".tools/node$1/runtime/node_modules/node/node_modules" -mindepth 4 -maxdepth 4 -name common.gypi -path '*/include/node/*' | head -n 1)
  if [ -n "$found" ]; then (cd "$(dirname "$found")/../.." && pwd); fi
}

# The project's dependencies for node $1 in .tools/node$1/deps: the same package-lock, better-sqlite3 compiled for
# that runtime's ABI. Skipped while the lock file and the runtime are those of the last install.
install_deps() {
  local version=$1 dir=.tools/node$1/deps bin key nodedir
  bin=$root/.tools/node$version/runtime/node_modules/.bin
  key="$(sha256sum package-lock.json | cut -d' ' -f1) $("$bin/node" --version)"
  if [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$key" ]; then return 0; fi
  nodedir=$(headers_dir "$version")
  echo "node-versions: installing the dependencies for node $("$bin/node" --version) (better-sqlite3 compiles: a few minutes)"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp package.json package-lock.json "$dir/"
  # The packages are the ones setup.sh's `npm ci` already put in npm's cache; only better-sqlite3 needs its scripts
  # (the project's own `prepare` would build the project there). Its prebuilt binaries are not in the registry, so
  # it builds from source straight away against the runtime's own headers.
  (
    cd "$dir"
    export PATH="$bin:$PATH" npm_config_build_from_source=true JOBS=max
    [ -n "$nodedir" ] && export npm_config_nodedir="$nodedir"
    npm ci --prefer-offline --ignore-scripts --no-audit --no-fund --loglevel=error
    npm rebuild better-sqlite3 --loglevel=error >/dev/null
  )
  echo "$key" >"$dir/.installed"
}

# Builds the project with node $1 into a scratch checkout that uses .tools/node$1/deps, and runs the tests there.
run_tests() {
  local version=$1 bin run status=0 started=$SECONDS
  bin=$root/.tools/node$version/runtime/node_modules/.bin
  run=$(mktemp -d "${TMPDIR:-/tmp}/marmot-node$version.XXXXXX")
  # Copies, not links: node and tsc resolve a linked file to its real place, and would use the shared node_modules.
  cp -r package.json tsconfig.json bin scripts src test bench "$run/"
  ln -s "$(cd .tools && pwd -P)" "$run/.tools"
  ln -s "$root/.tools/node$version/deps/node_modules" "$run/node_modules"
  echo "node-versions: building and testing on node $("$bin/node" --version)"
  (
    cd "$run"
    export PATH="$bin:$PATH"
    node "$root/node_modules/typescript/bin/tsc" -p tsconfig.json
    # Files, not folders: from Node 22 on, `node --test` takes its arguments as file patterns only.
    node --test --test-concurrency=1 dist/test/unit/*.test.js dist/test/integration/*.test.js
  ) || status=$?
  rm -rf "$run"
  echo "node-versions: node $("$bin/node" --version): build and tests took $((SECONDS - started)) s"
  return $status
}

for version in "${versions[@]}"; do install_runtime "$version"; done
# The two compiles run side by side: each is one long compiler process.
pids=()
for version in "${versions[@]}"; do
  install_deps "$version" &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "node-versions: could not install the dependencies for node ${versions[$i]}" >&2; exit 1; }
done
echo "node-versions: runtimes and dependencies ready after $SECONDS s"
# The runtimes' test runs go side by side too (most of their time is spent waiting on servers); each one's output
# is kept in a file and printed whole once it ends, so the two do not interleave.
logs=$(mktemp -d "${TMPDIR:-/tmp}/marmot-node-versions.XXXXXX")
pids=()
for version in "${versions[@]}"; do
  run_tests "$version" >"$logs/$version.log" 2>&1 &
  pids+=($!)
done
failed=()
for i in "${!pids[@]}"; do
  status=0
  wait "${pids[$i]}" || status=$?
  cat "$logs/${versions[$i]}.log"
  [ "$status" -eq 0 ] || failed+=("${versions[$i]}")
done
rm -rf "$logs"
if [ ${#failed[@]} -gt 0 ]; then
  echo "node-versions: tests failed on node ${failed[*]}" >&2
  exit 1
fi
echo "node-versions: unit and integration tests pass on node ${versions[*]}"
