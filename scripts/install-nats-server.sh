#!/usr/bin/env bash
# Puts a nats-server marmot can rely on into .tools/bin (marmot looks there before PATH): Debian's 2.15.1 package,
# fetched with apt-get from the Debian archive this machine's apt sources already name, with the suite that has it
# in place of the machine's own, and checked against its pinned SHA-256. Safe to run again. Called by setup.sh.
#
# Why these versions: older servers have faults marmot cannot repair (see the README's limits):
# - 2.9 (Debian bookworm's) can leave a stream's replicas holding different messages at the same sequence after a
#   network partition, and the nodes reading them then end apart;
# - 2.10.27 (trixie's, the fallback pin) now and then leaves one server of a freshly started cluster out of the
#   JetStream meta group, and R3 streams then cannot be placed until a server restarts.
# Nothing is fetched when the machine's own nats-server is at least as new as the first pin. When no pin can be
# fetched, the machine's own server (or Debian's package for this release) is the fallback, with a warning.
#
# Environment (for tests, and for machines set up differently):
#   MARMOT_APT_SOURCES   a sources file (one-line .list or deb822 .sources) or a folder of them, read instead of
#                        the machine's apt sources
#   MARMOT_NATS_BIN_DIR  where the binary goes (default: .tools/bin of the checkout)
#   MARMOT_NATS_PINS     pins to use instead of the ones below, one a line, in the same format
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_PINS=(
  # version    Debian suite  SHA-256 amd64                                                     SHA-256 arm64
  "2.15.1-1    forky   31ef4ceaa84e8248d449e508472e3770c17c3695cb5cb0ee96e03912724ea884  68923b614b6b5594bbd63ffdce7258c2155ec448fb4cb7efd099bf9273eca128"
  "2.10.27-1+b2 trixie 6d913ac987b78734c08537c2adeb1526cf735f216173a9170d94b185fcfe6f8a  0c9a617510b28c1b4fb4a38aabea6ab8cd7f026247f2abdff8b955b2278ce049"
)
if [ -n "${MARMOT_NATS_PINS:-}" ]; then mapfile -t NATS_PINS < <(printf '%s\n' "$MARMOT_NATS_PINS" | grep -v '^[[:space:]]*$'); fi
bin_dir=${MARMOT_NATS_BIN_DIR:-.tools/bin}

say() { echo "install-nats-server: $*"; }
warn() { echo "install-nats-server: $*" >&2; }

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

# The sources files apt reads: $MARMOT_APT_SOURCES, else apt's own main list and parts folder. Files apt skips
# (other endings, such as a ".disabled" suffix) are skipped here too.
source_files() {
  local main parts f
  if [ -n "${MARMOT_APT_SOURCES:-}" ]; then
    if [ -d "$MARMOT_APT_SOURCES" ]; then parts=$MARMOT_APT_SOURCES; else main=$MARMOT_APT_SOURCES; fi
  else
    eval "$(apt-config shell main Dir::Etc::SourceList/f parts Dir::Etc::SourceParts/d)"
  fi
  parts=${parts%/}
  [ -n "${main:-}" ] && [ -f "$main" ] && echo "$main"
  if [ -n "${parts:-}" ] && [ -d "$parts" ]; then
    for f in "$parts"/*.list "$parts"/*.sources; do [ -f "$f" ] && echo "$f"; done
  fi
  return 0
}

# Writes, as deb822 paragraphs for suite $1, one entry for each Debian archive of the files named on stdin: the
# entries whose suite is the machine's own release (or a Debian release name), not -updates or -security, with
# their URI and options (Signed-By, Trusted, ...) kept as they are.
debian_entries() {
  local suite=$1 codename
  codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  # shellcheck disable=SC2046 # one argument a file
  awk -v suite="$suite" -v codename="$codename" '
    function is_debian(s) {
      return s == codename || s ~ /^(stable|oldstable|testing|unstable|sid|buster|bullseye|bookworm|trixie|forky|duke)$/
    }
    function field_name(key,    parts, n, i, out) {
      if (key == "arch") return "Architectures"
      if (key == "lang") return "Languages"
      n = split(key, parts, "-")
      out = ""
      for (i = 1; i <= n; i++) out = out (i > 1 ? "-" : "") toupper(substr(parts[i], 1, 1)) substr(parts[i], 2)
      return out
    }
    function emit(uri, options,    key) {
      key = uri "\t" options
      if (key in seen) return
      seen[key] = 1
      printf "Types: deb\nURIs: %s\nSuites: %s\nComponents: main\n", uri, suite
      if (options != "") print options
      print ""
    }
    # deb822: a paragraph of "Field: value" lines; continuation lines start with a space.
    function flush(    n, i, uris, suites, debian) {
      if (!in_para) return
      in_para = 0
      if (tolower(f["enabled"]) == "no" || f["types"] !~ /(^|[[:space:]])deb([[:space:]]|$)/) { delete f; opts = ""; return }
      n = split(f["suites"], suites, /[[:space:]]+/)
      debian = 0
      for (i = 1; i <= n; i++) if (is_debian(suites[i])) debian = 1
      if (debian) {
        n = split(f["uris"], uris, /[[:space:]]+/)
        for (i = 1; i <= n; i++) if (uris[i] != "") emit(uris[i], opts)
      }
      delete f
      opts = ""
    }
    FNR == 1 { flush(); deb822 = FILENAME ~ /\.sources$/ }
    deb822 && /^[[:space:]]*#/ { next }
    deb822 && /^[[:space:]]*$/ { flush(); next }
    deb822 && /^[[:space:]]/ { if (last != "") { f[last] = f[last] "\n" $0; if (keep) opts = opts "\n" $0 } next }
    deb822 {
      in_para = 1
      name = substr($0, 1, index($0, ":") - 1)
      value = substr($0, index($0, ":") + 1)
      sub(/^[[:space:]]+/, "", value); sub(/[[:space:]]+$/, "", value)
      last = tolower(name)
      f[last] = value
      keep = last !~ /^(types|uris|suites|components|enabled)$/
      if (keep) opts = opts (opts == "" ? "" : "\n") name ": " value
      next
    }
    # One-line format: deb [key=value ...] URI SUITE COMPONENT...
    /^[[:space:]]*deb[[:space:]]/ {
      line = $0
      sub(/#.*/, "", line)
      sub(/^[[:space:]]*deb[[:space:]]+/, "", line)
      options = ""
      if (line ~ /^\[/) {
        n = split(substr(line, 2, index(line, "]") - 2), kv, /[[:space:]]+/)
        for (i = 1; i <= n; i++) {
          if (kv[i] == "" || index(kv[i], "=") == 0) continue
          key = substr(kv[i], 1, index(kv[i], "=") - 1)
          sub(/[+-]$/, "", key)
          value = substr(kv[i], index(kv[i], "=") + 1)
          if (key == "arch" || key == "lang") gsub(/,/, " ", value)
          options = options (options == "" ? "" : "\n") field_name(key) ": " value
        }
        line = substr(line, index(line, "]") + 1)
      }
      n = split(line, words, /[[:space:]]+/)
      j = 0
      for (i = 1; i <= n; i++) if (words[i] != "") rest[++j] = words[i]
      if (j >= 2 && is_debian(rest[2])) emit(rest[1], options)
      delete rest
    }
    END { flush() }
  ' $(cat)
}

# Fetches one pinned nats-server package ($1 version, $2 suite, $3 amd64 hash, $4 arm64 hash) through apt-get, with
# its own sources list, package lists and cache in a scratch folder so the machine's apt state is not touched, and
# installs its binary into $bin_dir; false (with the reason) when it cannot.
fetch_nats_server() {
  local version=$1 suite=$2 arch sha tmp deb apt
  arch=$(dpkg --print-architecture)
  case "$arch" in
    amd64) sha=$3 ;;
    arm64) sha=$4 ;;
    *) warn "no pinned nats-server build for $arch"; return 1 ;;
  esac
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  mkdir -p "$tmp/parts" "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/download" "$tmp/root"
  # apt fetches as its unprivileged user when it runs as root: it must be able to write there.
  if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/download"; fi
  source_files | debian_entries "$suite" >"$tmp/nats.sources"
  if [ ! -s "$tmp/nats.sources" ]; then
    warn "found no Debian archive in the apt sources ($(source_files | tr '\n' ' ')); cannot fetch nats-server $version"
    rm -rf "$tmp"
    return 1
  fi
  say "fetching nats-server $version ($arch, Debian $suite) with apt-get from $(grep '^URIs:' "$tmp/nats.sources" | cut -d' ' -f2- | tr '\n' ' ')"
  apt=(apt-get -q -o "Dir::Etc::SourceList=$tmp/nats.sources" -o "Dir::Etc::SourceParts=$tmp/parts"
    -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o "APT::Get::List-Cleanup=0")
  # One unreachable archive fails the update but may leave another that has the package: the download decides.
  "${apt[@]}" update >"$tmp/update.log" 2>&1 || true
  if ! (cd "$tmp/download" && "${apt[@]}" download "nats-server=$version") >"$tmp/download.log" 2>&1; then
    warn "apt-get could not fetch nats-server $version from Debian $suite:"
    sed 's/^/  /' "$tmp/update.log" "$tmp/download.log" | grep -E '^  (E|W|Err):|Unable|not found' >&2 || sed 's/^/  /' "$tmp/download.log" >&2
    rm -rf "$tmp"
    return 1
  fi
  deb=$(find "$tmp/download" -name 'nats-server_*.deb' | head -n 1)
  if [ -z "$deb" ] || ! echo "$sha  $deb" | sha256sum --check --status; then
    warn "$(basename "${deb:-nats-server.deb}") does not match its pinned SHA-256 ($sha); not using it"
    rm -rf "$tmp"
    return 1
  fi
  dpkg-deb -x "$deb" "$tmp/root"
  mkdir -p "$bin_dir"
  install -m 0755 "$tmp/root/usr/sbin/nats-server" "$bin_dir/nats-server"
  say "installed $("$bin_dir/nats-server" --version) into $bin_dir"
  rm -rf "$tmp"
}

system_nats=$(command -v nats-server 2>/dev/null || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true)
read -r first_pin _ <<<"${NATS_PINS[0]}"
wanted=$(deb_version_number "$first_pin")
have_tools=$(nats_version "$bin_dir/nats-server")
have_system=0
[ -n "$system_nats" ] && have_system=$(nats_version "$system_nats")
if [ "$have_tools" -ge "$wanted" ] || [ "$have_system" -ge "$wanted" ]; then exit 0; fi

for pin in "${NATS_PINS[@]}"; do
  # shellcheck disable=SC2086 # the pin's fields are words
  if [ "$(deb_version_number ${pin%% *})" -gt "$have_tools" ] && fetch_nats_server $pin; then exit 0; fi
done
if [ "$have_tools" -lt 2010000 ] && [ "$have_system" -lt 2010000 ]; then
  warn "WARNING: no nats-server 2.10 or newer could be fetched; using Debian's own (see the README's limits)"
  if [ -z "$system_nats" ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  fi
fi
