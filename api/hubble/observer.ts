import { status, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { FilterError } from '../../agent/flows/filter.js';
import type { HubbleFlowRecord, HubbleLostEventsRecord } from '../../agent/flows/hubble.js';
import type { HubbleBackend } from './backend.js';
import { protoFiltersCompile } from './filter.js';
import { flowResponseEncoderCreate, type FlowResponseEncoder } from './flow-encoder.js';
import { flowResponse, lostResponse, timestampToMs, type GetFlowsResponseMessage } from './flow-convert.js';
import { serverStreamBatchWrites } from './batch-writes.js';
import { FOLLOW_INFLIGHT_BYTES, FollowStream } from './follow-stream.js';
import { peerAddress } from './cluster-peers.js';
import { getFlowsResponseSerialize } from './proto.js';
import { grpcError, snapshotRefusal, streamRefusal, type HubbleContext } from './context.js';

interface GetFlowsRequest {
  number?: number;
  first?: boolean;
  follow?: boolean;
  whitelist?: unknown;
  blacklist?: unknown;
  since?: { seconds?: number; nanos?: number } | null;
  until?: { seconds?: number; nanos?: number } | null;
}

type Pred = (r: HubbleFlowRecord) => boolean;

/** The time bounds and the filters of a request as one predicate; throws FilterError. */
function requestPredicate(req: GetFlowsRequest): { pred: Pred; since?: number; until?: number } {
  const filter = protoFiltersCompile(req.whitelist, req.blacklist);
  const since = timestampToMs(req.since);
  const until = timestampToMs(req.until);
  if (since === undefined && until === undefined) return { pred: filter };
  // The same comparison as GET /v1/flows (milliseconds of the flow's time).
  const pred: Pred = (r) => {
    const t = Date.parse(r.time);
    return (since === undefined || t >= since) && (until === undefined || t <= until) && filter(r);
  };
  return { pred, ...(since !== undefined ? { since } : {}), ...(until !== undefined ? { until } : {}) };
}

/**
 * What the ring gives before following: `number` newest (or oldest with `first`) matching flows; with
 * no number, every matching flow, except when following without `since` (from now on, as Hubble).
 */
function recentSelect(backend: HubbleBackend, req: GetFlowsRequest, pred: Pred, since: number | undefined): HubbleFlowRecord[] {
  const ring = backend.flows.ring;
  const number = Math.min(Math.max(0, Number(req.number ?? 0) || 0), ring.capacity);
  if (req.follow && number === 0 && since === undefined) return [];
  const matching = ring.last().filter(pred);
  if (number === 0) return matching;
  return req.first ? matching.slice(0, number) : matching.slice(-number);
}

/** A flow's GetFlowsResponse: encoded directly when the encoder can, else as an object for proto-loader. */
type FlowOut = GetFlowsResponseMessage | Buffer;

function getFlows(ctx: HubbleContext, encode: FlowResponseEncoder, serializeResponse: (m: GetFlowsResponseMessage | Buffer) => Buffer, call: ServerWritableStream<GetFlowsRequest, FlowOut>): void {
  const backend = ctx.backend();
  if (!backend) return void call.emit('error', ctx.startingError());
  const req = call.request;
  let sel: ReturnType<typeof requestPredicate>;
  try {
    if (req.first && req.follow) throw new FilterError('first: cannot be combined with follow');
    sel = requestPredicate(req);
  } catch (err) {
    if (err instanceof FilterError) return void call.emit('error', grpcError(status.INVALID_ARGUMENT, `flow filter: ${err.message}`));
    throw err;
  }
  const refused = req.follow ? streamRefusal(ctx) : snapshotRefusal(ctx);
  if (refused) return void call.emit('error', refused);
  const flowOut = (r: HubbleFlowRecord): FlowOut => {
    const extras = backend.extras?.(r);
    return encode(r, extras) ?? flowResponse(r, extras);
  };
  const recent = recentSelect(backend, req, sel.pred, sel.since);
  if (!req.follow) {
    serverStreamBatchWrites(call as ServerWritableStream<unknown, unknown>);
    return snapshotSend(ctx, call, recent, flowOut);
  }

  const follow = new FollowStream(call as ServerWritableStream<unknown, unknown>, {
    queue: ctx.followQueue,
    inflightBytes: FOLLOW_INFLIGHT_BYTES,
    encodeInto: (w, r) => encode.into(w, r, backend.extras?.(r)),
    encode: (item) => serializeResponse('lost_events' in item ? lostResponse(item) : flowOut(item)),
    lostRecord: (count) => backend.flows.lostRecord('OBSERVER_EVENTS_QUEUE', count),
  });
  const onFlow = (r: HubbleFlowRecord) => {
    if (sel.pred(r)) follow.offer(r);
  };
  const onLost = (r: HubbleLostEventsRecord) => follow.offer(r);
  backend.flows.on('flow', onFlow);
  backend.flows.on('lost', onLost);
  let untilTimer: NodeJS.Timeout | undefined;
  let subscribed = true;
  const unsubscribe = () => {
    if (!subscribed) return;
    subscribed = false;
    if (untilTimer) clearTimeout(untilTimer);
    backend.flows.off('flow', onFlow);
    backend.flows.off('lost', onLost);
  };
  const gone = () => {
    unsubscribe();
    follow.close();
    ctx.followers.delete(gone);
  };
  ctx.followers.add(gone);
  call.on('cancelled', gone);
  call.on('close', gone);
  call.on('error', gone);
  for (const r of recent) follow.offer(r);
  if (sel.until !== undefined) {
    // Following up to a time: the stream ends then (a timer: no flow may come to end it), after what waits.
    const end = () => {
      unsubscribe();
      follow.end();
    };
    const wait = sel.until - Date.now();
    if (wait <= 0) end();
    else untilTimer = setTimeout(end, Math.min(wait, 2 ** 31 - 1));
  }
}

/**
 * A selection sent as fast as the client reads it: written until the stream's buffer is full
 * (write() false), continued on 'drain', ended after the last; dropped when the call is cancelled or
 * closed. The stream counts in ctx.snapshots until it closes (its client read it all, or went away).
 */
function snapshotSend(ctx: HubbleContext, call: ServerWritableStream<GetFlowsRequest, FlowOut>, recent: Array<HubbleFlowRecord | undefined>, flowOut: (r: HubbleFlowRecord) => FlowOut): void {
  let next = 0;
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    recent.length = 0;
    call.off('drain', pump);
    ctx.snapshots.delete(stop);
  };
  function pump(): void {
    while (!stopped && !call.cancelled && next < recent.length) {
      const r = recent[next]!;
      recent[next++] = undefined; // sent: not held by this stream any more
      if (!call.write(flowOut(r))) return;
    }
    if (stopped || call.cancelled) return;
    call.off('drain', pump);
    call.end();
  }
  ctx.snapshots.set(stop, () => call.writableLength);
  call.on('drain', pump);
  call.on('cancelled', stop);
  call.on('close', stop);
  call.on('error', stop);
  pump();
}

function serverStatus(ctx: HubbleContext, _call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<unknown>): void {
  const backend = ctx.backend();
  if (!backend) return cb(ctx.startingError());
  const ring = backend.flows.ring;
  cb(null, {
    num_flows: ring.length,
    max_flows: ring.capacity,
    seen_flows: ring.written,
    uptime_ns: ctx.uptimeNs(),
    num_connected_nodes: { value: 1 },
    num_unavailable_nodes: { value: 0 },
    version: backend.version,
    flows_rate: flowsRate(ring),
  });
}

/**
 * Flows per second over the last minute, from the ring (as Hubble's flows_rate): read from the newest
 * back to the first older than a minute, without a copy of the ring.
 */
function flowsRate(ring: HubbleBackend['flows']['ring']): number {
  const from = Date.now() - 60_000;
  let n = 0;
  for (let r = ring.newest(0); r !== undefined && Date.parse(r.time) >= from; r = ring.newest(n)) n++;
  return n / 60;
}

function getNodes(ctx: HubbleContext, _call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<unknown>): void {
  const backend = ctx.backend();
  if (!backend) return cb(ctx.startingError());
  const ring = backend.flows.ring;
  cb(null, {
    nodes: [
      {
        name: backend.nodeName,
        version: backend.version,
        address: ctx.address(),
        state: 'NODE_CONNECTED',
        tls: { enabled: ctx.tls.enabled, server_name: ctx.tls.serverName },
        uptime_ns: ctx.uptimeNs(),
        num_flows: ring.length,
        max_flows: ring.capacity,
        seen_flows: ring.written,
      },
      // Cluster mode: the other nodes. This host does not connect to them, so their state is unknown
      // (a relay that connects tells CONNECTED or UNAVAILABLE); the address is where a relay would.
      ...(backend.clusterNodes?.list() ?? [])
        .filter((n) => n.name !== backend.nodeName)
        .map((n) => ({ name: n.name, address: peerAddress(n, ctx.address()) ?? '', state: 'UNKNOWN_NODE_STATE', tls: { enabled: ctx.tls.enabled, server_name: n.name } })),
    ],
  });
}

function getNamespaces(ctx: HubbleContext, _call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<unknown>): void {
  const backend = ctx.backend();
  if (!backend) return cb(ctx.startingError());
  cb(null, { namespaces: backend.namespaces().map((namespace) => ({ cluster: '', namespace })) });
}

/** observer.Observer: GetFlows, ServerStatus, GetNodes, GetNamespaces. */
export function observerService(ctx: HubbleContext, encode: FlowResponseEncoder = flowResponseEncoderCreate()): UntypedServiceImplementation {
  const serializeResponse = getFlowsResponseSerialize();
  return {
    GetFlows: (call: ServerWritableStream<GetFlowsRequest, FlowOut>) => getFlows(ctx, encode, serializeResponse, call),
    ServerStatus: (call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<unknown>) => serverStatus(ctx, call, cb),
    GetNodes: (call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<unknown>) => getNodes(ctx, call, cb),
    GetNamespaces: (call: ServerUnaryCall<unknown, unknown>, cb: sendUnaryData<unknown>) => getNamespaces(ctx, call, cb),
  };
}
