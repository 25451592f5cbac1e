import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import type { Config } from './config.js';

export const HUBBLE_DEFAULT_PORT = 4244;

/** hubble.listen as host and port: `:4244` and `` are every address, `[::1]:4244` an IPv6 host. */
export function hubbleListenParse(listen: string): { host: string; port: number } {
  const m = listen.match(/^(\[[^\]]+\]|[^:[\]]*)(?::(\d+))?$/);
  if (!m) throw new Error(`hubble.listen: cannot parse ${listen}`);
  const host = m[1]!.replace(/^\[(.*)\]$/, '$1');
  return { host: host || '0.0.0.0', port: m[2] ? Number(m[2]) : HUBBLE_DEFAULT_PORT };
}

export interface HubbleTlsFiles {
  cert: Buffer;
  key: Buffer;
  clientCa?: Buffer;
}

/** OpenSSL's reason, without its error-code prefix. */
const tlsReason = (err: unknown) => String((err as Error).message).replace(/^error:[0-9A-F]+:/, '');

/** Reads and checks hubble.tls (PEM, key matching the certificate, CA bundle); problems name the key. */
export function hubbleTlsRead(tls: NonNullable<Config['hubble']['tls']>, problems: Array<[string, string]>): HubbleTlsFiles | undefined {
  const read = (key: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (err) {
      problems.push([key, `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`]);
      return undefined;
    }
  };
  const check = (key: string, what: string, opts: Parameters<typeof createSecureContext>[0]) => {
    try {
      createSecureContext(opts);
      return true;
    } catch (err) {
      problems.push([key, `${what}: ${tlsReason(err)}`]);
      return false;
    }
  };
  const cert = read('hubble.tls.cert', tls.cert);
  const key = read('hubble.tls.key', tls.key);
  const clientCa = tls.clientCa ? read('hubble.tls.clientCa', tls.clientCa) : undefined;
  if (!cert || !key || (tls.clientCa && !clientCa)) return undefined;
  let ok = check('hubble.tls.cert', `${tls.cert} is not a PEM certificate`, { cert });
  ok = check('hubble.tls.key', `${tls.key} is not a PEM private key (or it is encrypted)`, { key }) && ok;
  if (clientCa) {
    // OpenSSL skips PEM blocks that are not certificates in a CA list: a key file would pass unnoticed.
    try {
      new X509Certificate(clientCa);
    } catch (err) {
      problems.push(['hubble.tls.clientCa', `${tls.clientCa} is not a PEM CA bundle: ${tlsReason(err)}`]);
      ok = false;
    }
  }
  if (!ok || !check('hubble.tls.key', `${tls.key} does not belong to the certificate ${tls.cert}`, { cert, key })) return undefined;
  return { cert, key, ...(clientCa ? { clientCa } : {}) };
}

/** The longest unix socket path (sun_path holds 108 bytes with the terminating NUL). */
const SOCKET_PATH_MAX = 107;

/**
 * The `hubble` keys' problems outside the schema, as [key, message] pairs for the config preflight
 * (the agent's start and `kitnet config check`).
 */
export function hubbleConfigProblems(config: Config): Array<[string, string]> {
  const h = config.hubble;
  if (!h.enabled) return [];
  const problems: Array<[string, string]> = [];
  const socket = resolve(hubbleSocketPath(config));
  if (Buffer.byteLength(socket) > SOCKET_PATH_MAX) problems.push(['hubble.socket', `${socket} is longer than the ${SOCKET_PATH_MAX} bytes a unix socket path may have`]);
  if (socket === resolve(config.api.socket)) problems.push(['hubble.socket', `${socket} is also api.socket: give the Hubble API its own socket`]);
  if (existsSync(socket) && statSync(socket).isDirectory()) problems.push(['hubble.socket', `${socket} is a directory`]);
  let dir = dirname(socket);
  while (!existsSync(dir)) dir = dirname(dir);
  if (!statSync(dir).isDirectory()) problems.push(['hubble.socket', `cannot create ${socket}: ${dir} is not a directory`]);
  if (h.tls) hubbleTlsRead(h.tls, problems);
  if (h.tls && h.listen === undefined) problems.push(['hubble.tls', 'is set but hubble.listen is not: TLS is for the TCP listener (the unix socket has none)']);
  return problems;
}

/** hubble.socket, or hubble.sock in the directory of api.socket (so an agent with its own API socket has its own). */
export function hubbleSocketPath(config: Config): string {
  return config.hubble.socket ?? resolve(dirname(config.api.socket), 'hubble.sock');
}
