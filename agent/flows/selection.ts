import { KitnetError } from '../../common/errors.js';
import type { FlowRecord, FlowSelection } from '../../common/schemas/flows.js';
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

/** GET /v1/flows: the matching flows in the ring, the newest `last` of them. */
export function flowsSelect(flows: FlowPipeline, sel: FlowSelection): FlowRecord[] {
  const pred = flowSelectionCompile(sel);
  const matching = flows.ring.last().filter(pred);
  return sel.last !== undefined ? matching.slice(-sel.last) : matching;
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
