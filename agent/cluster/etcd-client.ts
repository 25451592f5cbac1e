import { Etcd3 } from 'etcd3';
import type { Config } from '../config.js';
import type { EtcdTlsPrepared } from '../config-preflight.js';

/** An etcd client for `cluster.etcd`, with the TLS files configPrepare read and checked. */
export function etcdClientCreate(etcd: NonNullable<Config['cluster']>['etcd'], tls: EtcdTlsPrepared | undefined): Etcd3 {
  return new Etcd3({
    hosts: etcd.endpoints,
    ...(tls ? { credentials: { rootCertificate: tls.ca, ...(tls.cert && tls.key ? { certChain: tls.cert, privateKey: tls.key } : {}) } } : {}),
    // Unary calls must not hang on an unreachable etcd: the caller gets an error and retries.
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 10_000 }),
  });
}
