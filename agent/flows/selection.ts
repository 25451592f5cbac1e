import { KitnetError } from '../../common/errors.js';
import type { FlowRecord, FlowSelection, FlowSnapshot } from '../../common/schemas/flows.js';
import { FilterError, filtersCompile } from './filter.js';
import type { HubbleFlowRecord } from './hubble.js';
import type { FlowPipeline } from './pipeline.js';

/** A REST flow selection (Hubble filters, since/until) as a predicate; a bad filter is a 400 naming it. */
export function flowSelectionCompile(sel: FlowSelection): (r: HubbleFlowRecord) => boolean {
  try {
    const filter = filtersCompile(sel.whitelist, sel.blacklist);
    const since = sel.since ? Date.parse(sel.since) : undefined;
    const until = sel.until ? Date.parse(sel.until) : undefined;
    if (since === undefined && until === undefined) return filter;
    return (r) => {
      const t = Date.parse(r.time);
      return (since === undefined || t >= since) && (until === undefined || t <= until) && filter(r);
    };
  } catch (err) {
    if (err instanceof FilterError) throw new KitnetError('AGENT_ERR_API_VALIDATION', `flow filter: ${err.message}`, { cause: err });
    throw err;
  }
}

/**
 * GET /v1/flows: the matching flows in the ring now (the newest `last` of them), read as the client
 * takes them. Holds a position in the ring, never a copy of it: a reply is as large as the ring, and a
 * copy per request let clients that do not read make the agent keep any number of them. A reader
 * the ring overtakes is told how many flows it lost (HUBBLE_RING_BUFFER, as Hubble's ring reader),
 * matching or not, since they can no longer be told apart.
 */
export function flowsSnapshot(flows: FlowPipeline, sel: FlowSelection): FlowSnapshot {
  const pred = flowSelectionCompile(sel);
  const ring = flows.ring;
  // Flows written from now on are not part of the selection (followers get them).
  const end = ring.written;
  let next = end - ring.length;
  if (sel.last !== undefined) {
    // Where the newest `last` matches begin: counted backward, none of them kept.
    let found = 0;
    let start = end;
    for (let at = end - 1; at >= next && found < sel.last; at--) {
      const r = ring.newest(end - 1 - at);
      if (r !== undefined && pred(r)) {
        found++;
        start = at;
      }
    }
    next = start;
  }
  return {
    read(max: number): FlowRecord[] {
      const out: FlowRecord[] = [];
      while (next < end && out.length < max) {
        const back = ring.written - 1 - next;
        if (back >= ring.length) {
          const kept = Math.min(end, ring.written - ring.length);
          out.push(flows.lostRecord('HUBBLE_RING_BUFFER', kept - next));
          next = kept;
          continue;
        }
        const r = ring.newest(back);
        next++;
        if (r !== undefined && pred(r)) out.push(r);
      }
      return out;
    },
  };
}

/** GET /v1/flows?follow: matching flows and every lost-events record as they come; returns the unsubscribe. */
export function flowsFollow(flows: FlowPipeline, sel: FlowSelection, onRecord: (r: FlowRecord) => void): () => void {
  const pred = flowSelectionCompile(sel);
  const onFlow = (r: HubbleFlowRecord) => {
    if (pred(r)) onRecord(r);
  };
  flows.on('flow', onFlow);
  flows.on('lost', onRecord);
  return () => {
    flows.off('flow', onFlow);
    flows.off('lost', onRecord);
  };
}
