#!/usr/bin/env bash
# Installs what marmot and its tests need on a Debian machine with Node.js: nats-server 2.15.1, sqlite3 and sqldiff
# (from Debian's packages when missing), the npm packages, and the compiled code. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "setup: marmot needs Node.js 20 or newer (found $(node --version))" >&2
  exit 1
fi

# nats-server 2.15.1 into .tools/bin, through apt-get from the machine's own Debian archive (see that script).
./scripts/install-nats-server.sh

need=()
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v sqldiff >/dev/null 2>&1 || need+=(sqlite3-tools)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# the snapshot store tests' servers: rclone's WebDAV server, OpenSSH's sshd, ssh-keygen and ssh-keyscan
command -v rclone >/dev/null 2>&1 || need+=(rclone)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keyscan >/dev/null 2>&1 || need+=(openssh-client)
# the test of install-nats-server.sh builds a local apt repository
command -v dpkg-scanpackages >/dev/null 2>&1 || need+=(dpkg-dev)
command -v apt-ftparchive >/dev/null 2>&1 || need+=(apt-utils)
# Debian's chromium, for the status page test (driven by playwright-core; nothing downloads a browser)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# ip netns, for the partition test (it needs root, and is skipped without)
[ "$(id -u)" -eq 0 ] && ! command -v ip >/dev/null 2>&1 && need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} from Debian's packages"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# npm ci when the lock file matches, so every machine builds the same thing; better-sqlite3 compiles here.
if [ ! -d node_modules/better-sqlite3 ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages (better-sqlite3 compiles from source: about 2 minutes)"
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
nats=$(node -e 'import("./dist/src/stream/nats-binary.js").then((m) => console.log(m.findNatsServer()))')
echo "setup: ready ($nats: $("$nats" --version), sqlite3 $(sqlite3 --version | cut -d' ' -f1), node $(node --version))"
