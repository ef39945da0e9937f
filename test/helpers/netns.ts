// A private network of Linux network namespaces for partition tests: one namespace per node, joined by a bridge.
//
// Nothing is added to the host's own namespace: the bridge lives in a namespace of its own, so the addresses
// below are reachable only from processes the test starts inside these namespaces.

import { execFileSync } from "node:child_process";

/** Why partition tests cannot run here, or undefined when they can. */
export function netnsUnavailable(): string | undefined {
  if (process.platform !== "linux") return `network namespaces are Linux only (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return "creating network namespaces needs root";
  try {
    execFileSync("ip", ["-V"], { stdio: "ignore" });
  } catch {
    return "the ip command (iproute2) is not installed";
  }
  const probe = `mtprobe${process.pid}`;
  try {
    ip(["netns", "add", probe]);
    ip(["netns", "del", probe]);
  } catch (err) {
    return `ip netns does not work here: ${(err as Error).message.trim()}`;
  }
  return undefined;
}

function ip(args: string[]): string {
  try {
    return execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? "";
    throw new Error(`ip ${args.join(" ")} failed: ${stderr || (err as Error).message}`, { cause: err });
  }
}

const created = new Set<TestNetwork>();
// The last resort when the test process dies: namespaces outlive it otherwise.
process.on("exit", () => {
  for (const network of created) network.destroy();
});

export class TestNetwork {
  private readonly prefix = `mt${process.pid}`;
  private destroyed = false;

  private constructor(readonly size: number) {}

  /** `size` namespaces with one address each on a shared bridge, loopback up in each. */
  static create(size: number): TestNetwork {
    const network = new TestNetwork(size);
    created.add(network);
    try {
      network.build();
    } catch (err) {
      network.destroy();
      throw err;
    }
    return network;
  }

  namespace(id: number): string {
    return `${this.prefix}-n${id}`;
  }

  /** The node's address on the private bridge (a private range, inside the test's namespaces only). */
  address(id: number): string {
    return `10.213.0.${id}`;
  }

  /** Run a command inside the node's namespace; `ip netns exec` execs it, so its pid is the command's own. */
  launcher(id: number): string[] {
    return ["ip", "netns", "exec", this.namespace(id)];
  }

  private get bridgeNamespace(): string {
    return `${this.prefix}-br`;
  }

  /** The bridge-side end of node `id`'s cable (interface names have at most 15 characters). */
  private port(id: number): string {
    return `${this.prefix}p${id}`.slice(-15);
  }

  private build(): void {
    const br = this.bridgeNamespace;
    ip(["netns", "add", br]);
    ip(["-n", br, "link", "add", "br0", "type", "bridge"]);
    ip(["-n", br, "link", "set", "br0", "up"]);
    for (let id = 1; id <= this.size; id++) {
      const ns = this.namespace(id);
      ip(["netns", "add", ns]);
      ip(["-n", ns, "link", "set", "lo", "up"]);
      // Both ends are born inside the namespaces: nothing appears in the host's namespace, not even briefly.
      ip(["-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", this.port(id), "netns", br]);
      ip(["-n", ns, "addr", "add", `${this.address(id)}/24`, "dev", "eth0"]);
      ip(["-n", ns, "link", "set", "eth0", "up"]);
      ip(["-n", br, "link", "set", this.port(id), "master", "br0"]);
      ip(["-n", br, "link", "set", this.port(id), "up"]);
    }
  }

  /** Cut node `id` off from every other node: its packets are dropped at the bridge, as with a pulled cable. */
  isolate(id: number): void {
    ip(["-n", this.bridgeNamespace, "link", "set", this.port(id), "down"]);
  }

  heal(id: number): void {
    ip(["-n", this.bridgeNamespace, "link", "set", this.port(id), "up"]);
  }

  /** Delete every namespace (their interfaces go with them); the processes inside must be stopped first. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    created.delete(this);
    for (const ns of [...Array.from({ length: this.size }, (_, i) => this.namespace(i + 1)), this.bridgeNamespace]) {
      try {
        ip(["netns", "del", ns]);
      } catch {
        // never created, or already gone
      }
    }
  }
}
