import { credentials, type ChannelCredentials, type Client, type ClientReadableStream, type ServiceClientConstructor } from '@grpc/grpc-js';
import { hubbleGrpcObject } from './proto.js';

type Unary = (req: object, cb: (err: Error | null, res: Record<string, unknown>) => void) => void;

/** kitnet's own Hubble client (tests, benchmarks): the three services on one channel target. */
export interface HubbleClient {
  observer: Client & Record<string, unknown>;
  peer: Client & Record<string, unknown>;
  health: Client & Record<string, unknown>;
  /** A unary call as a promise. */
  call(service: 'observer' | 'peer' | 'health', method: string, req?: object): Promise<Record<string, unknown>>;
  /** A server stream (GetFlows, Notify, Watch). */
  stream(service: 'observer' | 'peer' | 'health', method: string, req?: object): ClientReadableStream<Record<string, unknown>>;
  close(): void;
}

/** `target`: `unix:///path` or `host:port`; TLS with `creds`. */
export function hubbleClient(target: string, creds: ChannelCredentials = credentials.createInsecure(), options: Record<string, string | number> = {}): HubbleClient {
  const g = hubbleGrpcObject() as unknown as {
    observer: { Observer: ServiceClientConstructor };
    peer: { Peer: ServiceClientConstructor };
    grpc: { health: { v1: { Health: ServiceClientConstructor } } };
  };
  const clients = {
    observer: new g.observer.Observer(target, creds, options) as Client & Record<string, unknown>,
    peer: new g.peer.Peer(target, creds, options) as Client & Record<string, unknown>,
    health: new g.grpc.health.v1.Health(target, creds, options) as Client & Record<string, unknown>,
  };
  return {
    ...clients,
    call: (service, method, req = {}) =>
      new Promise((resolve, reject) => {
        const fn = clients[service][method] as Unary;
        fn.call(clients[service], req, (err, res) => (err ? reject(err) : resolve(res)));
      }),
    stream: (service, method, req = {}) => (clients[service][method] as (r: object) => ClientReadableStream<Record<string, unknown>>).call(clients[service], req),
    close: () => Object.values(clients).forEach((c) => c.close()),
  };
}
