#!/usr/bin/env bash
# Installs what marmot and its tests need on a Debian machine with Node.js: nats-server 2.10+, sqlite3 and sqldiff
# (from Debian's packages when missing), the npm packages, and the compiled code. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "setup: marmot needs Node.js 20 or newer (found $(node --version))" >&2
  exit 1
fi

# nats-server 2.10 or newer. 2.9 (Debian bookworm's) can leave a stream's replicas holding different messages at
# the same sequence after a network partition, and the nodes reading them then end apart. When the machine has no
# nats-server or an older one, Debian trixie's build (a static Go binary) goes into .tools/bin, checked against its
# SHA-256; marmot looks there before PATH. If that cannot be done, Debian's own package is the fallback.
NATS_DEB_VERSION="2.10.27-1+b2"
declare -A NATS_DEB_SHA256=(
  [amd64]=6d913ac987b78734c08537c2adeb1526cf735f216173a9170d94b185fcfe6f8a
  [arm64]=0c9a617510b28c1b4fb4a38aabea6ab8cd7f026247f2abdff8b955b2278ce049
)
NATS_DEB_POOL="${MARMOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}/pool/main/n/nats-server"

# The version of the nats-server at $1 as major*1000+minor (2010 for 2.10), 0 when it does not run.
nats_version() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/^nats-server: v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  if [ -n "$v" ]; then echo "$v" | awk '{ print $1 * 1000 + $2 }'; else echo 0; fi
}

# Fetches Debian trixie's nats-server into .tools/bin; false (with the reason) when it cannot.
fetch_nats_server() {
  local arch sha deb tmp
  arch=$(dpkg --print-architecture)
  sha=${NATS_DEB_SHA256[$arch]:-}
  if [ -z "$sha" ]; then
    echo "setup: no pinned nats-server 2.10 build for $arch" >&2
    return 1
  fi
  deb="nats-server_${NATS_DEB_VERSION}_${arch}.deb"
  tmp=$(mktemp -d)
  echo "setup: fetching nats-server ${NATS_DEB_VERSION} ($arch) from Debian into .tools/bin"
  if ! node -e '
      const [url, out] = process.argv.slice(1);
      fetch(url).then(async (r) => {
        if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
        require("node:fs").writeFileSync(out, Buffer.from(await r.arrayBuffer()));
      }).catch((e) => { console.error(`setup: ${e.message}`); process.exit(1); });
    ' "$NATS_DEB_POOL/$deb" "$tmp/$deb"; then
    rm -rf "$tmp"
    return 1
  fi
  if ! echo "$sha  $tmp/$deb" | sha256sum --check --status; then
    echo "setup: $deb does not match its pinned SHA-256; not using it" >&2
    rm -rf "$tmp"
    return 1
  fi
  dpkg-deb -x "$tmp/$deb" "$tmp/root"
  mkdir -p .tools/bin
  install -m 0755 "$tmp/root/usr/sbin/nats-server" .tools/bin/nats-server
  rm -rf "$tmp"
}

need=()
system_nats=$(command -v nats-server 2>/dev/null || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true)
if [ "$(nats_version .tools/bin/nats-server)" -lt 2010 ]; then
  if [ -z "$system_nats" ] || [ "$(nats_version "$system_nats")" -lt 2010 ]; then
    if ! fetch_nats_server; then
      echo "setup: WARNING: using Debian's own nats-server, older than 2.10 (see the README's limits)" >&2
      [ -z "$system_nats" ] && need+=(nats-server)
    fi
  fi
fi
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v sqldiff >/dev/null 2>&1 || need+=(sqlite3-tools)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
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
