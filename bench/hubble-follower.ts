// A GetFlows --follow client in its own process, as `hubble observe --follow` or hubble-relay is: it
// counts flows and lost_events and, for every Nth flow, the time from the flow's datapath timestamp to
// its arrival here. Messages are counted as they arrive and only the timed ones are decoded (a Go
// client decodes far faster than protobufjs; this keeps the JS client from being what is measured).
// Driven over stdin/stdout by hubble.bench.ts:
//   stdin "report\n" -> stdout {"flows":N,"lost":N,"latencyMs":[...]} (and counters reset)
//   node dist/bench/hubble-follower.js unix:///path/hubble.sock [time every Nth flow=1]
import { Client, credentials } from '@grpc/grpc-js';
import { createInterface } from 'node:readline';
import { hubbleProtoLoad } from '../api/hubble/proto.js';

const target = process.argv[2]!;
const every = Math.max(1, Number(process.argv[3] ?? 1));
const method = hubbleProtoLoad()['observer.Observer'] as unknown as Record<
  string,
  { path: string; requestSerialize: (m: object) => Buffer; responseDeserialize: (b: Buffer) => Record<string, unknown> }
>;
const getFlows = method.GetFlows!;
const client = new Client(target, credentials.createInsecure());
let flows = 0;
let lost = 0;
let latencyMs: number[] = [];
const stream = client.makeServerStreamRequest(getFlows.path, getFlows.requestSerialize, (b: Buffer) => b, { follow: true });
// GetFlowsResponse's first field on the wire is its oneof: 0x0a flow (1), 0x1a lost_events (3).
stream.on('data', (b: Buffer) => {
  if (b[0] === 0x1a) {
    lost += Number((getFlows.responseDeserialize(b).lost_events as { num_events_lost: number }).num_events_lost);
    return;
  }
  if (b[0] !== 0x0a) return;
  flows++;
  if (flows % every !== 0) return;
  const t = (getFlows.responseDeserialize(b).flow as { time: { seconds: number; nanos: number } }).time;
  latencyMs.push(performance.timeOrigin + performance.now() - (t.seconds * 1000 + t.nanos / 1e6));
});
stream.on('error', (err: Error) => {
  console.error(`follower: ${err.message}`);
  process.exit(1);
});
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line !== 'report') return;
  console.log(JSON.stringify({ flows, lost, latencyMs }));
  flows = 0;
  lost = 0;
  latencyMs = [];
});
process.stdin.on('end', () => process.exit(0));
