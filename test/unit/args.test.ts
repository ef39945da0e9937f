// Command-line flags: the original's spellings and forms, and errors that point at the flag.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseArgs } from "../../src/cli/args.js";
import { usage } from "../../src/cli/usage.js";

describe("parseArgs", () => {
  test("no arguments: nothing set", () => {
    assert.deepEqual(parseArgs([]), {
      configPath: "",
      cleanup: false,
      saveSnapshot: false,
      clusterAddr: "",
      clusterPeers: [],
      leafServers: [],
      help: false,
      version: false,
      status: false,
      parked: false,
      retry: false,
      discard: false,
      yes: false,
    });
  });

  test("-status, -parked -retry, -parked -discard -yes, with one dash or two", () => {
    assert.equal(parseArgs(["-config", "c.toml", "-status"]).status, true);
    assert.equal(parseArgs(["--status"]).status, true);
    const retry = parseArgs(["--parked", "--retry"]);
    assert.equal(retry.parked && retry.retry && !retry.discard, true);
    const discard = parseArgs(["-parked", "-discard", "-yes"]);
    assert.equal(discard.parked && discard.discard && discard.yes, true);
  });

  test("-retry or -discard without -parked, or both at once, is refused with what to write", () => {
    assert.throws(() => parseArgs(["-retry"]), /-retry acts on parked changes: use it with -parked/);
    assert.throws(() => parseArgs(["--discard"]), /-discard acts on parked changes/);
    assert.throws(() => parseArgs(["-parked", "-retry", "-discard"]), /exclude each other/);
    assert.throws(() => parseArgs(["-status", "-parked"]), /separate commands/);
  });

  test("one dash and two dashes mean the same", () => {
    const single = parseArgs(["-config", "/etc/marmot.toml", "-cleanup", "-cluster-addr", "localhost:4221"]);
    const double = parseArgs(["--config", "/etc/marmot.toml", "--cleanup", "--cluster-addr", "localhost:4221"]);
    assert.deepEqual(single, double);
    assert.equal(single.configPath, "/etc/marmot.toml");
    assert.equal(single.cleanup, true);
    assert.equal(single.clusterAddr, "localhost:4221");
  });

  test("-flag=value form, for strings and booleans", () => {
    const options = parseArgs(["-config=/a/b.toml", "--save-snapshot=true", "-cleanup=false", "--cluster-addr=0.0.0.0:4222"]);
    assert.equal(options.configPath, "/a/b.toml");
    assert.equal(options.saveSnapshot, true);
    assert.equal(options.cleanup, false);
    assert.equal(options.clusterAddr, "0.0.0.0:4222");
  });

  test("a value may itself contain '='", () => {
    assert.equal(parseArgs(["-config=/tmp/a=b.toml"]).configPath, "/tmp/a=b.toml");
  });

  test("comma lists are split, trimmed and blanks dropped", () => {
    const options = parseArgs([
      "-cluster-peers",
      "nats://localhost:4222/, nats://localhost:4223/,,",
      "--leaf-servers=nats://hub.example.com:7422,tls://hub2.example.com:7422",
    ]);
    assert.deepEqual(options.clusterPeers, ["nats://localhost:4222/", "nats://localhost:4223/"]);
    assert.deepEqual(options.leafServers, ["nats://hub.example.com:7422", "tls://hub2.example.com:7422"]);
  });

  test("-help, -h and -version", () => {
    assert.equal(parseArgs(["-help"]).help, true);
    assert.equal(parseArgs(["--help"]).help, true);
    assert.equal(parseArgs(["-h"]).help, true);
    assert.equal(parseArgs(["-version"]).version, true);
    assert.equal(parseArgs(["--version"]).help, false);
  });

  test("-pprof and its address are accepted and ignored", () => {
    const options = parseArgs(["-pprof", "localhost:6060", "-config", "c.toml"]);
    assert.equal(options.configPath, "c.toml");
  });

  test("an unknown flag is an error naming it and pointing at -help", () => {
    assert.throws(() => parseArgs(["-colour", "blue"]), { name: "ConfigError", message: /unknown flag -colour.*run marmot -help/ });
    assert.throws(() => parseArgs(["--verbose=true"]), { name: "ConfigError", message: /unknown flag --verbose/ });
  });

  test("a missing value is an error naming the flag", () => {
    assert.throws(() => parseArgs(["-config"]), { name: "ConfigError", message: /-config needs a value.*run marmot -help/ });
    assert.throws(() => parseArgs(["-cluster-addr", "-cleanup"]), { name: "ConfigError", message: /-cluster-addr needs a value/ });
  });

  test("a boolean with a value other than true/false is an error", () => {
    assert.throws(() => parseArgs(["-cleanup=yes"]), { name: "ConfigError", message: /-cleanup takes true or false/ });
  });

  test("positional arguments are errors", () => {
    assert.throws(() => parseArgs(["config.toml"]), { name: "ConfigError", message: /unexpected argument "config.toml"/ });
    assert.throws(() => parseArgs(["-cleanup", "--", "x"]), { name: "ConfigError", message: /unexpected argument "x"/ });
  });

  test("a bad cluster address is an error naming the value", () => {
    assert.throws(() => parseArgs(["-cluster-addr", "localhost"]), { name: "ConfigError", message: /-cluster-addr .*"localhost"/ });
    assert.throws(() => parseArgs(["-cluster-addr=host:99999"]), { name: "ConfigError", message: /"host:99999"/ });
  });

  test("peer and leaf URLs need a NATS scheme and a host", () => {
    assert.throws(() => parseArgs(["-cluster-peers", "nats://a:4222,http://b:4222"]), {
      name: "ConfigError",
      message: /-cluster-peers: "http:\/\/b:4222" is not a URL/,
    });
    assert.throws(() => parseArgs(["-leaf-servers", "hub:7422"]), { name: "ConfigError", message: /-leaf-servers: "hub:7422"/ });
    assert.deepEqual(parseArgs(["-cluster-peers", "nats-route://a:6222"]).clusterPeers, ["nats-route://a:6222"]);
  });
});

describe("usage", () => {
  test("lists every flag and where the docs are", () => {
    const text = usage();
    for (const flag of ["-config", "-cleanup", "-save-snapshot", "-cluster-addr", "-cluster-peers", "-leaf-servers", "-help", "-version"]) {
      assert.match(text, new RegExp(`^  ${flag}\\b`, "m"), `usage should list ${flag}`);
    }
    assert.match(text, /README\.md/);
  });
});
