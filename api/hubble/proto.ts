import { fileURLToPath } from 'node:url';
import { loadPackageDefinition, type GrpcObject, type ServiceDefinition } from '@grpc/grpc-js';
import { loadSync, type Options, type PackageDefinition } from '@grpc/proto-loader';

/** kitnet's own .proto subset of Hubble's API (api/hubble/proto, beside the compiled dist/). */
export const PROTO_DIR = fileURLToPath(new URL('../../../api/hubble/proto/', import.meta.url));

const FILES = ['flow/flow.proto', 'relay/relay.proto', 'observer/observer.proto', 'peer/peer.proto', 'grpc/health/v1/health.proto'];

/**
 * Messages as plain objects with the proto field names (`node_name`, `IP`), enums as their names,
 * 64-bit integers as JS numbers (counts and times far below 2^53; a larger request value is clamped).
 */
const LOAD_OPTIONS: Options = { keepCase: true, longs: Number, enums: String, defaults: false, oneofs: true, includeDirs: [PROTO_DIR] };

let loaded: PackageDefinition | undefined;

export function hubbleProtoLoad(): PackageDefinition {
  return (loaded ??= loadSync(FILES, LOAD_OPTIONS));
}

/** The service definitions the server registers. */
export function hubbleServices(): { observer: ServiceDefinition; peer: ServiceDefinition; health: ServiceDefinition } {
  const def = hubbleProtoLoad();
  return {
    observer: def['observer.Observer'] as ServiceDefinition,
    peer: def['peer.Peer'] as ServiceDefinition,
    health: def['grpc.health.v1.Health'] as ServiceDefinition,
  };
}

/** Client constructors by package (observer.Observer, peer.Peer, grpc.health.v1.Health) for kitnet's own client and tests. */
export function hubbleGrpcObject(): GrpcObject {
  return loadPackageDefinition(hubbleProtoLoad());
}
