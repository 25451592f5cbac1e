import type { Agent } from '../../agent/agent.js';
import { KITNET_VERSION } from '../../agent/agent.js';
import type { FlowPipeline } from '../../agent/flows/pipeline.js';

/** What the Hubble services read from the running agent: the same flow pipeline as GET /v1/flows. */
export interface HubbleBackend {
  nodeName: string;
  version: string;
  flows: Pick<FlowPipeline, 'ring' | 'on' | 'off' | 'lostRecord'>;
  /** Namespaces with workloads or namespace objects, sorted. */
  namespaces(): string[];
}

export function hubbleBackendOf(agent: Agent, nodeName: string): HubbleBackend {
  return {
    nodeName,
    version: KITNET_VERSION,
    flows: agent.flows,
    namespaces: () => [...new Set([...agent.workloadList().map((w) => w.namespace), ...agent.namespaceList().map((n) => n.name)])].sort(),
  };
}
