#!/usr/bin/env bash
# Starts a three-node marmot cluster on loopback, each node with its own copy of a Books database and its own
# embedded nats-server (cluster ports 4221-4223, status pages on 3011-3013). It says "ready; try this" once all
# three nodes are ready. Each run starts afresh: it removes the databases and each node's JetStream store
# (/tmp/marmot-nats-<node id>, beside the database), or the earlier run's changes would be replayed into the new
# databases. Ctrl-C stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${MARMOT_SKIP_SETUP:-}" = "1" ] || ./scripts/setup.sh

create_db() {
  rm -f "$1" "$1-wal" "$1-shm"
  sqlite3 "$1" <<'SQL'
CREATE TABLE Books (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    author TEXT NOT NULL,
    publication_year INTEGER
);
INSERT INTO Books (title, author, publication_year)
VALUES
('The Hitchhiker''s Guide to the Galaxy', 'Douglas Adams', 1979),
('The Lord of the Rings', 'J.R.R. Tolkien', 1954),
('Harry Potter and the Sorcerer''s Stone', 'J.K. Rowling', 1997),
('The Catcher in the Rye', 'J.D. Salinger', 1951),
('To Kill a Mockingbird', 'Harper Lee', 1960),
('1984', 'George Orwell', 1949),
('The Great Gatsby', 'F. Scott Fitzgerald', 1925);
SQL
  echo "created $1"
}

for i in 1 2 3; do
  rm -rf "/tmp/marmot-nats-$i" "/tmp/marmot-$i-sm.cbor"
  create_db "/tmp/marmot-$i.db"
done

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo "stopping marmot nodes: ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop_all INT TERM EXIT

./bin/marmot -config examples/node-1-config.toml -cluster-addr 127.0.0.1:4221 -cluster-peers 'nats://127.0.0.1:4222/,nats://127.0.0.1:4223/' &
pids+=($!)
./bin/marmot -config examples/node-2-config.toml -cluster-addr 127.0.0.1:4222 -cluster-peers 'nats://127.0.0.1:4221/,nats://127.0.0.1:4223/' &
pids+=($!)
./bin/marmot -config examples/node-3-config.toml -cluster-addr 127.0.0.1:4223 -cluster-peers 'nats://127.0.0.1:4221/,nats://127.0.0.1:4222/' &
pids+=($!)

# A node is ready once its capture triggers are installed, the streams exist and it has applied them to their end
# (GET /readyz answers 200): only then does a write made on any node travel to the others.
# Plain bash (/dev/tcp), in a subshell so the connection and its errors stay there.
readyz() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    status=""
    IFS= read -r status <&3 || true
    [[ "$status" == *" 200 "* ]]
  ) 2>/dev/null
}
deadline=$((SECONDS + 180))
for port in 3011 3012 3013; do
  until readyz "$port"; do
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "a marmot node (pid $pid) exited before the cluster was ready; see its log above" >&2; exit 1; }
    done
    [ "$SECONDS" -lt "$deadline" ] || { echo "the nodes were not ready within 180 s; see their logs above" >&2; exit 1; }
    sleep 0.5
  done
done

cat <<EOF
three marmot nodes ready (pids ${pids[*]}); try this in another terminal:
  sqlite3 /tmp/marmot-1.db "INSERT INTO Books (title, author, publication_year) VALUES ('Pride and Prejudice', 'Jane Austen', 1813);"
  sqlite3 /tmp/marmot-3.db "SELECT * FROM Books;"
status page: http://127.0.0.1:3011/ (and :3012, :3013); ./bin/marmot -config examples/node-1-config.toml -status
Ctrl-C stops them.
EOF
wait -n "${pids[@]}" || true
