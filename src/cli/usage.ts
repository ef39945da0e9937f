// The text of marmot -help: every flag on one line, and where to read more.

export function usage(): string {
  return [
    "Usage: marmot -config FILE [flags]",
    "",
    "Replicates a SQLite database among nodes over NATS JetStream; every node can write.",
    "",
    "Flags (each may also be written with --, and as -flag=value):",
    "  -config FILE                 TOML configuration file (without one, every default applies)",
    "  -cleanup                     remove marmot's triggers and change-log tables from the database, then exit",
    "  -save-snapshot               upload a snapshot of the database to the configured store, then exit",
    "  -status                      print every node's state, lag and parked changes, then exit: 0 when all are ready",
    "                               and agree, 1 when not, 3 when NATS cannot be reached",
    "  -parked                      list the changes this node parked (could not apply), then exit",
    "  -parked -retry               apply the parked changes now (through the running node when there is one)",
    "  -parked -discard [-yes]      delete the parked changes after a confirmation (-yes: without asking)",
    "  -cluster-addr HOST:PORT      cluster listen address of the embedded NATS server (e.g. 0.0.0.0:4222)",
    "  -cluster-peers URL,URL       cluster routes to the other nodes' embedded servers (e.g. nats://host2:4222/,nats://host3:4222/)",
    "  -leaf-servers URL,URL        NATS servers the embedded server joins as a leaf node",
    "  -pprof ADDR                  accepted for compatibility with the original Marmot and ignored",
    "  -version                     print the version and exit",
    "  -help, -h                    print this help and exit",
    "",
    "Configuration keys, examples and operation are described in README.md.",
    "",
  ].join("\n");
}
