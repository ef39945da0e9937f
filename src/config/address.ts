// Shapes of network addresses marmot accepts, shared by the config file and the command line.

export interface HostPort {
  host: string;
  port: number;
}

/**
 * Splits "host:port" (IPv6 hosts in brackets). `anyPort` admits -1, the nats-server spelling of
 * "pick a free port"; `hostRequired` rejects ":4222", which only makes sense for a listen address.
 */
export function parseHostPort(text: string, options: { anyPort?: boolean; hostRequired?: boolean } = {}): HostPort | undefined {
  const colon = text.lastIndexOf(":");
  if (colon < 0) return undefined;
  const host = text.slice(0, colon);
  const portText = text.slice(colon + 1);
  if (options.hostRequired && host === "") return undefined;
  const bracketed = /^\[[0-9A-Fa-f:.%a-zA-Z]+\]$/.test(host);
  if (!bracketed && !/^[A-Za-z0-9._-]*$/.test(host)) return undefined;
  if (portText === "-1") return options.anyPort ? { host, port: -1 } : undefined;
  if (!/^[0-9]{1,5}$/.test(portText)) return undefined;
  const port = Number(portText);
  if (port > 65535) return undefined;
  return { host, port };
}

/** True when `text` is a URL with one of `schemes` (without "://") and a host. */
export function isUrlWithScheme(text: string, schemes: readonly string[]): boolean {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return false;
  }
  return schemes.includes(url.protocol.replace(/:$/, "")) && url.hostname !== "";
}
