#!/usr/bin/env bash
# Starts a three-node marmot cluster on loopback, each node with its own copy of a Books database and its own
# embedded nats-server (cluster ports 4221-4223). Try, in another terminal:
#   sqlite3 /tmp/marmot-1.db "INSERT INTO Books (title, author, publication_year) VALUES ('Pride and Prejudice', 'Jane Austen', 1813);"
#   sqlite3 /tmp/marmot-3.db "SELECT * FROM Books;"
# Ctrl-C stops every process it started.
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

echo "three marmot nodes running (pids ${pids[*]}); Ctrl-C stops them"
wait -n "${pids[@]}" || true
