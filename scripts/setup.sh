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

# nats-server: Debian forky's 2.15.1 build goes into .tools/bin (marmot looks there before PATH), checked against
# its SHA-256; when Debian's mirror no longer has it, trixie's 2.10.27. Older servers have faults marmot cannot
# repair (see the README's limits):
# - 2.9 (Debian bookworm's) can leave a stream's replicas holding different messages at the same sequence after a
#   network partition, and the nodes reading them then end apart;
# - 2.10.27 now and then leaves one server of a freshly started cluster out of the JetStream meta group, and R3
#   streams then cannot be placed until a server restarts.
# Nothing is fetched when the machine's own nats-server is at least as new as the first pin. If no pin can be
# fetched, the machine's own server (or Debian's package) is the fallback, with a warning.
NATS_PINS=(
  # version    Debian suite  SHA-256 amd64                                                     SHA-256 arm64
  "2.15.1-1    forky   31ef4ceaa84e8248d449e508472e3770c17c3695cb5cb0ee96e03912724ea884  68923b614b6b5594bbd63ffdce7258c2155ec448fb4cb7efd099bf9273eca128"
  "2.10.27-1+b2 trixie 6d913ac987b78734c08537c2adeb1526cf735f216173a9170d94b185fcfe6f8a  0c9a617510b28c1b4fb4a38aabea6ab8cd7f026247f2abdff8b955b2278ce049"
)
NATS_DEB_POOL="${MARMOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}/pool/main/n/nats-server"

# The version of the nats-server at $1 as one comparable number (2015001 for 2.15.1), 0 when it does not run.
nats_version() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/^nats-server: v\([0-9]*\)\.\([0-9]*\)\.\([0-9]*\).*/\1 \2 \3/p')
  if [ -n "$v" ]; then echo "$v" | awk '{ print $1 * 1000000 + $2 * 1000 + $3 }'; else echo 0; fi
}

# "2.15.1-1" -> 2015001
deb_version_number() {
  echo "$1" | sed 's/-.*//' | awk -F. '{ print $1 * 1000000 + $2 * 1000 + $3 }'
}

# Fetches one pinned nats-server package ($1 version, $2 suite, $3 amd64 hash, $4 arm64 hash) into .tools/bin;
# false (with the reason) when it cannot.
fetch_nats_server() {
  local version=$1 suite=$2 arch sha deb tmp
  arch=$(dpkg --print-architecture)
  case "$arch" in
    amd64) sha=$3 ;;
    arm64) sha=$4 ;;
    *) echo "setup: no pinned nats-server build for $arch" >&2; return 1 ;;
  esac
  deb="nats-server_${version}_${arch}.deb"
  tmp=$(mktemp -d)
  echo "setup: fetching nats-server ${version} ($arch, Debian $suite) into .tools/bin"
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
read -r first_pin _ <<<"${NATS_PINS[0]}"
wanted=$(deb_version_number "$first_pin")
have_tools=$(nats_version .tools/bin/nats-server)
have_system=0
[ -n "$system_nats" ] && have_system=$(nats_version "$system_nats")
if [ "$have_tools" -lt "$wanted" ] && [ "$have_system" -lt "$wanted" ]; then
  fetched=false
  for pin in "${NATS_PINS[@]}"; do
    # shellcheck disable=SC2086 # the pin's fields are words
    if [ "$(deb_version_number ${pin%% *})" -gt "$have_tools" ] && fetch_nats_server $pin; then
      fetched=true
      break
    fi
  done
  if ! $fetched && [ "$have_tools" -lt 2010000 ] && [ "$have_system" -lt 2010000 ]; then
    echo "setup: WARNING: no nats-server 2.10 or newer could be fetched; using Debian's own (see the README's limits)" >&2
    [ -z "$system_nats" ] && need+=(nats-server)
  fi
fi
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v sqldiff >/dev/null 2>&1 || need+=(sqlite3-tools)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
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
