// Encoding a flow for Hubble's gRPC API on the agent's thread, µs per flow: the pipeline record (the
// decoded event and its two endpoints) to GetFlowsResponse bytes. Three ways, interleaved round by round
// on the same records:
//   - library: Hubble's JSON flow built from the event, converted (flowResponse) and serialised by
//     proto-loader (protobufjs fromObject + encode), as every flow was sent before;
//   - direct: api/hubble/flow-encoder.ts, bytes written from the event with the field numbers read
//     from the .proto, endpoints and policy lists encoded once per object, into one reusable buffer
//     (api/hubble/byte-writer.ts);
//   - direct-protobufjs: the same encoder on protobufjs's Writer (as it was before the in-place one).
// Each round encodes N fresh records (new uuids, ports cycling) per way; the figure is the median
// over rounds with min-max, and the ratio is computed per round.
//
//   node dist/bench/hubble-encode.bench.js [N=20000] [--rounds=R]
import type { FlowEvent } from '../bpf/index.js';
import { LazyFlowRecord } from '../agent/flows/enrich.js';
import type { HubbleEndpoint } from '../agent/flows/hubble.js';
import { policyFromRuleRef } from '../api/hubble/attribution.js';
import { flowResponse } from '../api/hubble/flow-convert.js';
import { flowEncoderOptions, flowResponseEncoderCreate } from '../api/hubble/flow-encoder.js';
import { hubbleProtoLoad } from '../api/hubble/proto.js';
import { MACHINE_LINE, argsParse, benchMain, fmt, median, resultWrite, table } from './lib.js';

const fe: HubbleEndpoint = { ID: 2, identity: 1001, namespace: 'shop', labels: ['k8s:app=fe', 'k8s:io.kubernetes.pod.namespace=shop', 'k8s:io.cilium.k8s.policy.cluster=default'], pod_name: 'fe', workloads: [{ name: 'fe', kind: 'ExternalWorkload' }] };
const db: HubbleEndpoint = { ID: 3, identity: 1002, namespace: 'shop', labels: ['k8s:app=db', 'k8s:io.kubernetes.pod.namespace=shop', 'k8s:io.cilium.k8s.policy.cluster=default'], pod_name: 'db', workloads: [{ name: 'db', kind: 'VirtualMachine' }] };
const base: FlowEvent = {
  timeNs: 1_764_900_000_123_456_789n, ifindex: 10, endpointId: 2, direction: 'EGRESS', family: 4, protocol: 6,
  srcAddr: '10.9.0.2', dstAddr: '10.9.0.3', srcPort: 40000, dstPort: 5432, icmpType: 0, icmpCode: 0, tcpFlags: 0x02,
  srcIdentity: 1001, dstIdentity: 1002, verdict: 'FORWARDED', dropReason: 0, isReply: false, length: 60, etherType: 0x0800,
};
const extras = { egress_allowed_by: [policyFromRuleRef('CiliumNetworkPolicy shop/fe-to-db egress[0]')!], interfaceName: 'kn-fe' };

async function main(): Promise<void> {
  const args = argsParse();
  const n = args.sizes[0] ?? (args.quick ? 5000 : 20_000);
  const rounds = Number(args.opts.rounds ?? (args.quick ? 5 : 11));
  console.log(`Hubble flow encoding: ${n} flows x ${rounds} rounds per way, interleaved; ${MACHINE_LINE()}`);
  const serialize = (hubbleProtoLoad()['observer.Observer'] as unknown as Record<string, { responseSerialize: (m: object) => Buffer }>).GetFlows!.responseSerialize;
  const encode = flowResponseEncoderCreate();
  const records = (round: number) => Array.from({ length: n }, (_, i) => new LazyFlowRecord({ ...base, srcPort: 1024 + ((round * n + i) % 60_000), timeNs: base.timeNs + BigInt(i) }, fe, db, 'node-1'));
  const ways = {
    library: (r: LazyFlowRecord) => serialize(flowResponse(r, extras)).length,
    direct: (r: LazyFlowRecord) => encode(r, extras)!.length,
    'direct-protobufjs': (r: LazyFlowRecord) => encode(r, extras)!.length,
  };
  const us: Record<keyof typeof ways, number[]> = { library: [], direct: [], 'direct-protobufjs': [] };
  const ratios: number[] = [];
  const writerRatios: number[] = [];
  let bytes = { library: 0, direct: 0, 'direct-protobufjs': 0 };
  for (let round = 0; round < rounds; round++) {
    const perRound = {} as Record<keyof typeof ways, number>;
    for (const way of Object.keys(ways) as Array<keyof typeof ways>) {
      const rs = records(round);
      flowEncoderOptions.inPlace = way !== 'direct-protobufjs';
      let total = 0;
      const t0 = performance.now();
      for (const r of rs) total += ways[way](r);
      perRound[way] = ((performance.now() - t0) * 1000) / n;
      bytes = { ...bytes, [way]: total / n };
      if (round > 0) us[way].push(perRound[way]); // round 0 warms up both
    }
    if (round > 0) ratios.push(perRound.library / perRound.direct);
    if (round > 0) writerRatios.push(perRound['direct-protobufjs'] / perRound.direct);
  }
  const row = (way: keyof typeof ways) => [way, fmt(median(us[way])), `${fmt(Math.min(...us[way]))}-${fmt(Math.max(...us[way]))}`, fmt(1e6 / median(us[way])), bytes[way]];
  table(`µs per flow (median of ${rounds - 1} rounds, min-max)`, ['way', 'µs/flow', 'min-max', 'flows/s (one core)', 'bytes'], [row('library'), row('direct-protobufjs'), row('direct')]);
  console.log(`direct is ${fmt(median(ratios))}x faster (per-round ratio, median; min-max ${fmt(Math.min(...ratios))}-${fmt(Math.max(...ratios))})`);
  console.log(`the in-place writer is ${fmt(median(writerRatios))}x faster than protobufjs's Writer in the same encoder (min-max ${fmt(Math.min(...writerRatios))}-${fmt(Math.max(...writerRatios))})`);
  resultWrite('hubble-encode', { n, rounds, us, ratios, writerRatios, bytes });
}

await benchMain(main);
