import type { FlowEvent } from '../../bpf/index.js';
import { flowBatchFrame, flowDecodeBatch, flowEventEncode, monotonicToWallOffsetNs } from '../../bpf/flow-decode.js';
import type { HubbleFlowRecord, PolicyMessage } from '../../agent/flows/hubble.js';
import type { FlowExtras, HubbleBackend } from './backend.js';

/**
 * A fresh agent runs its flow path (decode, enrich, encode for gRPC) in V8's interpreter and baseline
 * code for its first tens of thousands of flows, with V8 compiling it on another core: met by a flood
 * of flows and a follower from its start, it fell behind for its first half second and dropped flows
 * from the follower's queue (bench/README.md, section 7). So when it starts serving,
 * the agent runs that path over made-up events, a slice per turn of the event loop, and throws the
 * results away: nothing reaches the ring, a follower, the metrics or the policy engine (the events
 * name no endpoint of this host, so no policy is traced for them).
 */
export interface FlowPathWarm {
  /** Resolves when every slice ran or the warm was cancelled. */
  done: Promise<void>;
  cancel(): void;
}

/** Flows per turn of the event loop. */
const SLICE = 1_000;

/** The kinds of event the datapath writes, each with the fields that take the encoder down its own branch. */
function warmEvents(count: number): FlowEvent[] {
  const base: FlowEvent = {
    timeNs: 0n,
    ifindex: 0,
    endpointId: 0,
    direction: 'EGRESS',
    family: 4,
    protocol: 6,
    srcAddr: '192.0.2.1',
    dstAddr: '198.51.100.1',
    srcPort: 40_000,
    dstPort: 443,
    icmpType: 0,
    icmpCode: 0,
    tcpFlags: 0x02,
    srcIdentity: 2,
    dstIdentity: 2,
    verdict: 'FORWARDED',
    dropReason: 0,
    isReply: false,
    length: 74,
    reportReason: 'NEW',
    etherType: 0x0800,
  };
  const kinds: FlowEvent[] = [
    base,
    { ...base, direction: 'INGRESS', tcpFlags: 0x12, isReply: true, reportReason: 'FIRST_REPLY' },
    { ...base, protocol: 17, tcpFlags: 0, dstPort: 53, reportReason: 'EVERY' },
    { ...base, protocol: 1, tcpFlags: 0, srcPort: 0, dstPort: 0, icmpType: 8, verdict: 'DROPPED', dropReason: 133, reportReason: 'DROP' },
    { ...base, family: 6, etherType: 0x86dd, srcAddr: '2001:db8::1', dstAddr: '2001:db8::2', tcpFlags: 0x11, reportReason: 'CLOSE' },
    { ...base, family: 6, etherType: 0x86dd, srcAddr: '2001:db8::1', dstAddr: '2001:db8::2', protocol: 58, tcpFlags: 0, srcPort: 0, dstPort: 0, icmpType: 128, direction: 'INGRESS' },
  ];
  const out: FlowEvent[] = [];
  for (let i = 0; i < count; i++) {
    const k = kinds[i % kinds.length]!;
    // ports and the last address byte vary as a flood's do (the encoder caches text by value)
    out.push({ ...k, srcPort: k.srcPort ? 1024 + (i % 60_000) : 0, srcAddr: k.family === 4 ? `192.0.2.${i % 250}` : k.srcAddr });
  }
  return out;
}

/** Policy attribution as a flow that a policy allowed carries it (the encoder's policy lists). */
const WARM_POLICY: PolicyMessage = { name: 'warm', namespace: 'default', labels: ['k8s:io.cilium.k8s.policy.name=warm'], kind: 'CiliumNetworkPolicy' };
const WARM_EXTRAS: ReadonlyArray<FlowExtras | undefined> = [{ egress_allowed_by: [WARM_POLICY], interfaceName: 'warm0' }, { ingress_denied_by: [WARM_POLICY] }, undefined];

/** Runs `flows` made-up flows (config hubble.warmFlows) through decode, enrich and `encode`, SLICE a turn. */
export function flowPathWarm(backend: HubbleBackend, encode: (r: HubbleFlowRecord, extras?: FlowExtras) => unknown, flows: number): FlowPathWarm {
  let cancelled = false;
  const offset = monotonicToWallOffsetNs();
  const nowNs = BigInt(Date.now()) * 1_000_000n;
  // one batch, framed as the datapath's reader hands it over, decoded again for each slice
  const batch = flowBatchFrame(warmEvents(SLICE).map((ev) => flowEventEncode({ ...ev, timeNs: nowNs }, offset)));
  const done = (async () => {
    for (let run = 0; run < flows; run += SLICE) {
      // first yield: the caller (the agent starting to serve) goes on at once
      await new Promise((resolve) => setImmediate(resolve));
      if (cancelled) return;
      const records: HubbleFlowRecord[] = flowDecodeBatch(batch, offset).map((ev) => backend.flows.enrich(ev));
      for (let i = 0; i < Math.min(SLICE, flows - run); i++) {
        const r = records[i]!;
        encode(r, backend.extras?.(r) ?? WARM_EXTRAS[i % 3]);
      }
    }
  })();
  return {
    done,
    cancel: () => {
      cancelled = true;
    },
  };
}
