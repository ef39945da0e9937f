// Throwaway certificates for TLS tests: a CA, a server cert for 127.0.0.1/localhost and a client cert.

import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestCertificates {
  dir: string;
  /** the CA certificate that signed both certificates below */
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** a second CA that signed nothing here: trusting it must not make the server trusted */
  otherCaCert: string;
  remove(): void;
}

/** Generates the certificates with the openssl CLI into a fresh temporary directory. */
export function makeCertificates(): TestCertificates {
  const dir = mkdtempSync(join(tmpdir(), "marmot-tls-"));
  const path = (name: string) => join(dir, name);

  makeCa(path("ca-key.pem"), path("ca.pem"), "Marmot Test CA");
  makeCa(path("other-ca-key.pem"), path("other-ca.pem"), "Marmot Unrelated CA");

  writeFileSync(
    path("server.ext"),
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature,keyEncipherment",
      "extendedKeyUsage=serverAuth",
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ].join("\n") + "\n",
  );
  makeLeaf(dir, "server", "localhost", path("server.ext"));

  writeFileSync(
    path("client.ext"),
    ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment", "extendedKeyUsage=clientAuth"].join("\n") + "\n",
  );
  makeLeaf(dir, "client", "marmot-test-client", path("client.ext"));

  return {
    dir,
    caCert: path("ca.pem"),
    serverCert: path("server.pem"),
    serverKey: path("server-key.pem"),
    clientCert: path("client.pem"),
    clientKey: path("client-key.pem"),
    otherCaCert: path("other-ca.pem"),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

function makeCa(keyFile: string, certFile: string, commonName: string): void {
  openssl([
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    keyFile,
    "-out",
    certFile,
    "-days",
    "2",
    "-subj",
    `/CN=${commonName}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
}

function makeLeaf(dir: string, name: string, commonName: string, extFile: string): void {
  const key = join(dir, `${name}-key.pem`);
  const csr = join(dir, `${name}.csr`);
  openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr, "-subj", `/CN=${commonName}`]);
  openssl([
    "x509",
    "-req",
    "-in",
    csr,
    "-CA",
    join(dir, "ca.pem"),
    "-CAkey",
    join(dir, "ca-key.pem"),
    "-set_serial",
    String(Date.now()),
    "-days",
    "2",
    "-extfile",
    extFile,
    "-out",
    join(dir, `${name}.pem`),
  ]);
}

function openssl(args: string[]): void {
  try {
    execFileSync("openssl", args, { stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString() ?? "";
    throw new Error(`openssl ${args[0]} failed: ${stderr.trim() || String(err)}`, { cause: err });
  }
}
