import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPackageDefinition, type GrpcObject, type ServiceDefinition } from '@grpc/grpc-js';
import { loadSync, type Options, type PackageDefinition } from '@grpc/proto-loader';
import protobuf from 'protobufjs';

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

let root: protobuf.Root | undefined;

/** The same .proto files as protobufjs reflection, for the flow encoder's field numbers (api/hubble/flow-encoder.ts). */
export function hubbleProtoRoot(): protobuf.Root {
  if (!root) {
    const r = new protobuf.Root();
    r.resolvePath = (_origin, target) => join(PROTO_DIR, target);
    r.loadSync(FILES, { keepCase: true });
    r.resolveAll();
    root = r;
  }
  return root;
}

/**
 * Observer with GetFlows responses that may come already encoded (a Buffer from the flow encoder):
 * those pass through, messages as objects go through proto-loader as before.
 */
function observerWithEncodedFlows(observer: ServiceDefinition): ServiceDefinition {
  const getFlows = observer.GetFlows!;
  const serialize = getFlows.responseSerialize;
  return { ...observer, GetFlows: { ...getFlows, responseSerialize: (value: unknown) => (Buffer.isBuffer(value) ? value : serialize(value)) } };
}

/** GetFlowsResponse bytes of a message object (proto-loader's, as the server sends it) or of bytes already encoded. */
export function getFlowsResponseSerialize(): (value: unknown) => Buffer {
  return observerWithEncodedFlows(hubbleProtoLoad()['observer.Observer'] as ServiceDefinition).GetFlows!.responseSerialize;
}

/** The service definitions the server registers. */
export function hubbleServices(): { observer: ServiceDefinition; peer: ServiceDefinition; health: ServiceDefinition } {
  const def = hubbleProtoLoad();
  return {
    observer: observerWithEncodedFlows(def['observer.Observer'] as ServiceDefinition),
    peer: def['peer.Peer'] as ServiceDefinition,
    health: def['grpc.health.v1.Health'] as ServiceDefinition,
  };
}

/** Client constructors by package (observer.Observer, peer.Peer, grpc.health.v1.Health) for kitnet's own client and tests. */
export function hubbleGrpcObject(): GrpcObject {
  return loadPackageDefinition(hubbleProtoLoad());
}
