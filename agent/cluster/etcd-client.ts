import { circuitBreaker, ConsecutiveBreaker, handleWhen } from 'cockatiel';
import { Etcd3, isRecoverableError } from 'etcd3';
import type { Config } from '../config.js';
import type { EtcdTlsPrepared } from '../config-preflight.js';

/** How long a host's circuit stays open after 3 recoverable failures in a row before one call tries it again. */
export const ETCD_HALF_OPEN_AFTER_MS = 1000;

/** An etcd client for `cluster.etcd`, with the TLS files configPrepare read and checked. */
export function etcdClientCreate(etcd: NonNullable<Config['cluster']>['etcd'], tls: EtcdTlsPrepared | undefined): Etcd3 {
  return new Etcd3({
    hosts: etcd.endpoints,
    ...(tls ? { credentials: { rootCertificate: tls.ca, ...(tls.cert && tls.key ? { certChain: tls.cert, privateKey: tls.key } : {}) } } : {}),
    // Unary calls must not hang on an unreachable etcd: the caller gets an error and retries.
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 10_000 }),
    // etcd3's own breaker (3 failures open it for 5 s) holds every call back for up to 5 s after etcd is
    // back, and again if that first try fails: a resync after an outage waited seconds for nothing
    // (bench/cluster.bench.ts, part c). One second keeps a dead host from being hammered.
    faultHandling: { host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: ETCD_HALF_OPEN_AFTER_MS, breaker: new ConsecutiveBreaker(3) }) },
  });
}

/**
 * An operator's reading of a TLS failure talking to etcd, naming the config key and file at fault;
 * undefined when the error is not one. grpc-js reports the handshake only as "No connection
 * established. Last error: <openssl text>", which names neither.
 */
export function etcdTlsExplain(err: unknown, etcd: NonNullable<Config['cluster']>['etcd'], key = 'cluster.etcd'): string | undefined {
  const text = String((err as Error)?.message ?? err);
  const tls = etcd.tls;
  const reason = (/Last error: (?:Error: )?([^\n]*?)(?:\. Resolution note|$)/m.exec(text)?.[1] ?? text).replace(/^[0-9A-F]+:error:[0-9A-F]+:/, '').trim();
  if (/unable to verify|self[- ]signed certificate|unable to get (local )?issuer|certificate has expired|certificate is not yet valid|certificate signature failure/i.test(text)) {
    return tls
      ? `${key}.tls.ca: ${tls.ca} does not verify etcd's server certificate (${reason}); give the CA that signed etcd's --cert-file`
      : `${key}.tls: etcd's server certificate is not trusted (${reason}); set ${key}.tls.ca to the CA that signed etcd's --cert-file`;
  }
  if (/does not match certificate's altnames|Hostname\/IP does not match/i.test(text)) {
    return `${key}.endpoints: etcd's server certificate does not name the endpoint's host (${reason}); connect by a name or address in its subjectAltName`;
  }
  if (/alert (bad certificate|certificate required|unknown ca|certificate unknown|certificate expired|certificate revoked|unsupported certificate)/i.test(text)) {
    return tls?.cert
      ? `${key}.tls.cert: etcd refused the client certificate ${tls.cert} (${reason}); it must be signed by a CA in etcd's --trusted-ca-file`
      : `${key}.tls: etcd asks for a client certificate (--client-cert-auth) and none is configured (${reason}); set ${key}.tls.cert and ${key}.tls.key`;
  }
  // A plain-http server answers the ClientHello with an HTTP/2 error and closes: the client sees either
  // the early disconnect or, when the close races the read, ECONNRESET.
  const https = etcd.endpoints.some((e) => e.startsWith('https://'));
  if (/wrong version number|packet length too long|http request|disconnected before secure TLS connection/i.test(text) || (https && /\bECONNRESET\b/.test(text))) {
    return `${key}.endpoints: ${etcd.endpoints.join(', ')} did not complete a TLS handshake (${reason}); if etcd serves plain http there, use an http:// endpoint or start etcd with --cert-file`;
  }
  return undefined;
}
