#!/usr/bin/env bash
# Installs what marmot and its tests need on a Debian machine with Node.js: nats-server, sqlite3 and sqldiff
# from Debian's packages (when missing), the npm packages, and the compiled code. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v sqldiff >/dev/null 2>&1 || need+=(sqlite3-tools)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} from Debian's packages"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "setup: marmot needs Node.js 20 or newer (found $(node --version))" >&2
  exit 1
fi

# npm ci when the lock file matches, so every machine builds the same thing; better-sqlite3 compiles here.
if [ ! -d node_modules/better-sqlite3 ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages (better-sqlite3 compiles from source: about 2 minutes)"
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
echo "setup: ready ($(nats-server --version 2>/dev/null || /usr/sbin/nats-server --version), sqlite3 $(sqlite3 --version | cut -d' ' -f1), node $(node --version))"
