import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TestCa {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A client certificate from another CA (refused under mTLS). */
  strangerCert: string;
  strangerKey: string;
}

const openssl = (args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A throwaway CA in `dir` with a server certificate (`serverName` and 127.0.0.1) and client certificates. */
export function testCaMake(dir: string, serverName: string): TestCa {
  const p = (f: string) => join(dir, f);
  openssl(['req', '-x509', ...EC, '-keyout', p('ca-key.pem'), '-out', p('ca.pem'), '-days', '1', '-subj', '/CN=kitnet test CA']);
  openssl(['req', '-x509', ...EC, '-keyout', p('stranger-ca-key.pem'), '-out', p('stranger-ca.pem'), '-days', '1', '-subj', '/CN=stranger CA']);
  const sign = (name: string, subject: string, ext: string, ca = 'ca') => {
    openssl(['req', ...EC, '-keyout', p(`${name}-key.pem`), '-out', p(`${name}.csr`), '-subj', subject]);
    writeFileSync(p(`${name}.ext`), ext);
    openssl(['x509', '-req', '-in', p(`${name}.csr`), '-CA', p(`${ca}.pem`), '-CAkey', p(`${ca}-key.pem`), '-CAcreateserial', '-out', p(`${name}.pem`), '-days', '1', '-extfile', p(`${name}.ext`)]);
  };
  sign('server', `/CN=${serverName}`, `subjectAltName=DNS:${serverName},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n`);
  sign('client', '/CN=hubble-client', 'extendedKeyUsage=clientAuth\n');
  sign('stranger', '/CN=stranger', 'extendedKeyUsage=clientAuth\n', 'stranger-ca');
  return {
    ca: p('ca.pem'), serverCert: p('server.pem'), serverKey: p('server-key.pem'),
    clientCert: p('client.pem'), clientKey: p('client-key.pem'), strangerCert: p('stranger.pem'), strangerKey: p('stranger-key.pem'),
  };
}
