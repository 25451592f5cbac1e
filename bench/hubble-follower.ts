// A GetFlows --follow client in its own process, as `hubble observe --follow` or hubble-relay is: it
// counts flows and lost_events and, for every Nth flow, the time from the flow's datapath timestamp to
// its arrival here. Messages are counted as they arrive and only the timed ones are decoded (a Go
// client decodes far faster than protobufjs; this keeps the JS client from being what is measured).
// Two clients: `http2` (default) reads the gRPC stream with node:http2 and splits its length-prefixed
// messages itself, a few instructions a message as in a Go client; `grpc-js` is kitnet's own client
// library, whose per-message work (~30-50 µs on this machine: message framing, a stream event, a
// Writable per message) caps what one follower process can take at 15-20k messages/s.
// Driven over stdin/stdout by hubble.bench.ts:
//   stdin "report\n" -> stdout {"flows":N,"lost":N,"latencyMs":[...],"cpuUs":N} (counters reset;
//   cpuUs: this process's CPU time since the last report)
//   node dist/bench/hubble-follower.js unix:///path/hubble.sock [time every Nth flow=1] [http2|grpc-js]
import { Client, credentials } from '@grpc/grpc-js';
import { connect as http2Connect, constants as H2 } from 'node:http2';
import { connect as netConnect } from 'node:net';
import { createInterface } from 'node:readline';
import { hubbleProtoLoad, hubbleProtoRoot } from '../api/hubble/proto.js';

const target = process.argv[2]!;
const every = Math.max(1, Number(process.argv[3] ?? 1));
const clientKind = process.argv[4] ?? 'http2';
const method = hubbleProtoLoad()['observer.Observer'] as unknown as Record<
  string,
  { path: string; requestSerialize: (m: object) => Buffer; responseDeserialize: (b: Buffer) => Record<string, unknown> }
>;
const getFlows = method.GetFlows!;
let flows = 0;
let lost = 0;
let latencyMs: number[] = [];
let cpuAt = process.cpuUsage();
// Field numbers from kitnet's .proto: GetFlowsResponse.flow and .lost_events, Flow.time.
const root = hubbleProtoRoot();
const RESPONSE_FLOW = root.lookupType('observer.GetFlowsResponse').fields.flow!.id;
const RESPONSE_LOST = root.lookupType('observer.GetFlowsResponse').fields.lost_events!.id;
const FLOW_TIME = root.lookupType('flow.Flow').fields.time!.id;
const LEN = 2;

// A flow's time read straight off the wire, fields skipped until it (as a Go client's generated code
// reads them); decoding every timed flow with protobufjs was a third of this process's CPU.
let at = 0;
function varint(b: Buffer): number {
  let v = 0;
  let scale = 1;
  let x: number;
  do {
    x = b[at++]!;
    v += (x & 0x7f) * scale;
    scale *= 128;
  } while (x & 0x80 && at < b.length);
  return v;
}
function skip(b: Buffer, wireType: number): void {
  if (wireType === 0) varint(b);
  else if (wireType === LEN) at += varint(b);
  else if (wireType === 1) at += 8;
  else if (wireType === 5) at += 4;
  else at = b.length;
}
/** Walks to field `id` (length-delimited) within b[at..end): its body's end, `at` at its start; -1 if absent. */
function fieldBody(b: Buffer, end: number, id: number): number {
  while (at < end) {
    const tag = varint(b);
    if (tag >>> 3 === id && (tag & 7) === LEN) {
      const len = varint(b);
      return at + len;
    }
    skip(b, tag & 7);
  }
  return -1;
}
function flowTimeMs(b: Buffer): number | undefined {
  at = 0;
  const flowEnd = fieldBody(b, b.length, RESPONSE_FLOW);
  if (flowEnd < 0) return undefined;
  const timeEnd = fieldBody(b, flowEnd, FLOW_TIME);
  if (timeEnd < 0) return undefined;
  let seconds = 0;
  let nanos = 0;
  while (at < timeEnd) {
    const tag = varint(b);
    if (tag >>> 3 === 1) seconds = varint(b);
    else if (tag >>> 3 === 2) nanos = varint(b);
    else skip(b, tag & 7);
  }
  return seconds * 1000 + nanos / 1e6;
}

// GetFlowsResponse's first field on the wire is its oneof: flow or lost_events.
const FLOW_TAG = (RESPONSE_FLOW << 3) | LEN;
const LOST_TAG = (RESPONSE_LOST << 3) | LEN;
const onMessage = (b: Buffer) => {
  if (b[0] === LOST_TAG) {
    lost += Number((getFlows.responseDeserialize(b).lost_events as { num_events_lost: number }).num_events_lost);
    return;
  }
  if (b[0] !== FLOW_TAG) return;
  flows++;
  if (flows % every !== 0) return;
  const t = flowTimeMs(b);
  if (t !== undefined) latencyMs.push(performance.timeOrigin + performance.now() - t);
};
const fail = (err: Error) => {
  console.error(`follower: ${err.message}`);
  process.exit(1);
};

if (clientKind === 'grpc-js') {
  const client = new Client(target, credentials.createInsecure());
  client.makeServerStreamRequest(getFlows.path, getFlows.requestSerialize, (b: Buffer) => b, { follow: true }).on('data', onMessage).on('error', fail);
} else {
  if (!target.startsWith('unix://')) throw new Error('the http2 follower takes unix://PATH');
  // A large window, as Go's client grows its own: flow control is not what is measured.
  const session = http2Connect('http://localhost', { createConnection: () => netConnect(target.slice('unix://'.length)), settings: { initialWindowSize: 16 << 20 } });
  session.on('error', fail);
  session.on('connect', () => session.setLocalWindowSize(64 << 20));
  const req = session.request({ [H2.HTTP2_HEADER_METHOD]: 'POST', [H2.HTTP2_HEADER_PATH]: getFlows.path, 'content-type': 'application/grpc', te: 'trailers' });
  const body = getFlows.requestSerialize({ follow: true });
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, 5);
  req.end(frame);
  req.on('error', fail);
  // The stream as length-prefixed messages: 1 byte flags, 4 bytes length, the message.
  let pending = Buffer.alloc(0);
  req.on('data', (chunk: Buffer) => {
    let buf = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    let off = 0;
    while (buf.length - off >= 5) {
      const len = buf.readUInt32BE(off + 1);
      if (buf.length - off - 5 < len) break;
      onMessage(buf.subarray(off + 5, off + 5 + len));
      off += 5 + len;
    }
    pending = off === buf.length ? Buffer.alloc(0) : Buffer.from(buf.subarray(off));
    buf = pending;
  });
}
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line !== 'report') return;
  const cpu = process.cpuUsage(cpuAt);
  cpuAt = process.cpuUsage();
  console.log(JSON.stringify({ flows, lost, latencyMs, cpuUs: cpu.user + cpu.system }));
  flows = 0;
  lost = 0;
  latencyMs = [];
});
process.stdin.on('end', () => process.exit(0));
