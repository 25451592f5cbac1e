import { lookup } from 'node:dns/promises';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { dirname, resolve } from 'node:path';
import { createSecureContext } from 'node:tls';
import { hubbleConfigProblems } from './hubble-config.js';
import { tokensLoad, type TokenSet } from '../common/tokens.js';
import { pinRootCheck } from '../bpf/index.js';
import { ConfigError, type Config } from './config.js';
import { addressParse, cidrContains, cidrParse } from './ipam.js';

/**
 * Everything in a config that can fail outside its schema, checked before the agent touches anything:
 * TLS files (read, parsed, key matching certificate), the tokens file, the TCP host (resolved), the
 * socket path, the pin root (on bpffs), the state dir and audit file (under a directory). The agent runs
 * it first; `kitnet config check` runs the same, so it refuses every file the agent would refuse.
 * Listening is not part of it (a port in use is a fact of the moment): the agent binds right after.
 */

export interface TcpPrepared {
  https: { cert: Buffer; key: Buffer };
  tokens: TokenSet;
}

/** What the etcd client needs (cluster mode): the PEM files, read and checked. */
export interface EtcdTlsPrepared {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

export interface ConfigPrepared {
  tcp: TcpPrepared | undefined;
  etcdTls: EtcdTlsPrepared | undefined;
  /** cluster.peers[i].etcd.tls, by peer name. */
  peerEtcdTls: Map<string, EtcdTlsPrepared>;
}

/** A setting the agent takes but an operator should look at; `key` is the config key. */
export interface ConfigWarning {
  key: string;
  message: string;
}

/** The longest unix socket path (sun_path holds 108 bytes with the terminating NUL). */
const SOCKET_PATH_MAX = 107;

/** The deepest existing ancestor of `path` (or path itself). */
function existingAncestor(path: string): string {
  let dir = resolve(path);
  while (!existsSync(dir)) dir = dirname(dir);
  return dir;
}

/** A path the agent makes (a directory or a file) must have a directory as its nearest existing ancestor. */
function creatableCheck(key: string, path: string, want: 'dir' | 'file', problems: Array<[string, string]>): void {
  const abs = resolve(path);
  if (existsSync(abs)) {
    const st = statSync(abs);
    if (want === 'dir' && !st.isDirectory()) problems.push([key, `${path} exists and is not a directory`]);
    if (want === 'file' && st.isDirectory()) problems.push([key, `${path} is a directory`]);
    return;
  }
  const anc = existingAncestor(dirname(abs));
  if (!statSync(anc).isDirectory()) problems.push([key, `cannot create ${path}: ${anc} is not a directory`]);
}

function fileRead(key: string, path: string, problems: Array<[string, string]>): Buffer | undefined {
  try {
    return readFileSync(path);
  } catch (err) {
    problems.push([key, `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`]);
    return undefined;
  }
}

/** OpenSSL's reason, without its error-code prefix. */
const tlsReason = (err: unknown) => String((err as Error).message).replace(/^error:[0-9A-F]+:/, '');

/** The certificate and key parse as PEM and belong together (what https.createServer would refuse). */
function tlsCheck(tls: { cert: string; key: string }, problems: Array<[string, string]>, prefix = 'api.tcp.tls'): { cert: Buffer; key: Buffer } | undefined {
  const cert = fileRead(`${prefix}.cert`, tls.cert, problems);
  const key = fileRead(`${prefix}.key`, tls.key, problems);
  if (!cert || !key) return undefined;
  let ok = true;
  try {
    createSecureContext({ cert });
  } catch (err) {
    problems.push([`${prefix}.cert`, `${tls.cert} is not a PEM certificate: ${tlsReason(err)}`]);
    ok = false;
  }
  try {
    createSecureContext({ key });
  } catch (err) {
    problems.push([`${prefix}.key`, `${tls.key} is not a PEM private key (or it is encrypted): ${tlsReason(err)}`]);
    ok = false;
  }
  if (!ok) return undefined;
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    problems.push([`${prefix}.key`, `${tls.key} does not belong to the certificate ${tls.cert}: ${tlsReason(err)}`]);
    return undefined;
  }
  return { cert, key };
}

/** cluster.etcd.tls: the CA parses as PEM certificates; a client certificate and key as for the REST listener. */
function etcdTlsCheck(tls: { ca: string; cert?: string; key?: string }, problems: Array<[string, string]>, prefix = 'cluster.etcd.tls'): EtcdTlsPrepared | undefined {
  const ca = fileRead(`${prefix}.ca`, tls.ca, problems);
  let caOk = false;
  if (ca) {
    try {
      createSecureContext({ ca });
      caOk = ca.includes('-----BEGIN CERTIFICATE-----');
      if (!caOk) problems.push([`${prefix}.ca`, `${tls.ca} is not a PEM certificate: no BEGIN CERTIFICATE block`]);
    } catch (err) {
      problems.push([`${prefix}.ca`, `${tls.ca} is not a PEM certificate: ${tlsReason(err)}`]);
    }
  }
  const client = tls.cert && tls.key ? tlsCheck({ cert: tls.cert, key: tls.key }, problems, prefix) : undefined;
  if (!ca || !caOk || (tls.cert && !client)) return undefined;
  return { ca, ...client };
}

/**
 * Checks (and loads what the agent needs of) everything the config points at. Throws one ConfigError
 * naming every bad key (`keys`), never touching anything.
 */
export async function configPrepare(config: Config): Promise<ConfigPrepared> {
  const problems: Array<[string, string]> = [];
  let tcp: TcpPrepared | undefined;
  const t = config.api.tcp;
  if (t?.tls && t.tokensFile) {
    const https = tlsCheck(t.tls, problems);
    let tokens: TokenSet | undefined;
    try {
      tokens = tokensLoad(t.tokensFile);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(['api.tcp.tokensFile', err.message.replace(/^api\.tcp\.tokensFile: /, '')]);
    }
    try {
      await lookup(t.host);
    } catch (err) {
      problems.push(['api.tcp.host', `cannot resolve "${t.host}" (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): give an address or a name this host resolves`]);
    }
    if (https && tokens) tcp = { https, tokens };
  }
  const etcdTls = config.cluster?.etcd.tls ? etcdTlsCheck(config.cluster.etcd.tls, problems) : undefined;
  const peerEtcdTls = new Map<string, EtcdTlsPrepared>();
  config.cluster?.peers.forEach((p, i) => {
    const t = p.etcd.tls && etcdTlsCheck(p.etcd.tls, problems, `cluster.peers.${i}.etcd.tls`);
    if (t) peerEtcdTls.set(p.name, t);
  });
  if (Buffer.byteLength(resolve(config.api.socket)) > SOCKET_PATH_MAX) {
    problems.push(['api.socket', `${config.api.socket} is longer than the ${SOCKET_PATH_MAX} bytes a unix socket path may have`]);
  }
  creatableCheck('api.socket', config.api.socket, 'file', problems);
  creatableCheck('stateDir', config.stateDir, 'dir', problems);
  if (config.api.audit.file) creatableCheck('api.audit.file', config.api.audit.file, 'file', problems);
  problems.push(...hubbleConfigProblems(config));
  try {
    pinRootCheck(config.bpfPinRoot);
  } catch (err) {
    problems.push(['bpfPinRoot', (err as { hint?: string }).hint ?? (err as Error).message]);
  }
  if (problems.length) {
    throw new ConfigError(problems.map(([k, m]) => `${k}: ${m}`).join('; '), [...new Set(problems.map(([k]) => k))]);
  }
  return { tcp, etcdTls, peerEtcdTls };
}

/** The host's own addresses (every interface), for the pool overlap warning. */
export function hostAddresses(): Array<{ ifname: string; address: string }> {
  return Object.entries(networkInterfaces()).flatMap(([ifname, list]) => (list ?? []).map((a) => ({ ifname, address: a.address.replace(/%.*$/, '') })));
}

/** Settings the agent takes but that are probably not meant: a socket open to others, odd pools. */
export function configWarnings(config: Config, addresses = hostAddresses()): ConfigWarning[] {
  const out: ConfigWarning[] = [];
  const mode = config.api.socketMode;
  if (mode & ~0o660) {
    out.push({ key: 'api.socketMode', message: `0o${mode.toString(8)} is wider than 0o660: users outside root and the kitnet group can use the API (it has no other authentication)` });
  }
  for (const key of ['ipv4Pool', 'ipv6Pool'] as const) {
    const text = config.ipam[key];
    const pool = cidrParse(text);
    const given = addressParse(text.split('/')[0]!);
    if (given.value !== pool.network) out.push({ key: `ipam.${key}`, message: `${text} has host bits set: the pool is ${pool.text}` });
    for (const a of addresses) {
      let parsed;
      try {
        parsed = addressParse(a.address);
      } catch {
        continue;
      }
      if (cidrContains(pool, parsed.family, parsed.value)) {
        out.push({ key: `ipam.${key}`, message: `${pool.text} contains ${parsed.text}, an address of this host (${a.ifname}): a workload could get it` });
      }
    }
  }
  return out;
}
