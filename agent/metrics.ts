import { Registry, type Gauge } from 'prom-client';
import type { Counter as DatapathCounter, FlowEvent, MetricName } from '../bpf/index.js';
import type { HubbleFlowRecord } from './flows/hubble.js';
import { agentMetricsRegister } from './metrics/agent.js';
import { datapathMetricsRegister } from './metrics/datapath.js';
import { HubbleFlowMetrics } from './metrics/flows.js';
import { workloadRegistrationObserve } from './metrics/process.js';
import type { MetricsSources } from './metrics/sources.js';

export type { BpfMapName, MetricsSources } from './metrics/sources.js';

/**
 * Prometheus metrics of the agent, served at `GET /metrics`: the registry and its scrapes. The
 * metric families are in metrics/: Hubble's flow metrics (flows.ts), the agent's own (agent.ts,
 * process.ts) and the datapath's (datapath.ts).
 *
 * Flow metrics use Hubble's names and labels (cilium pkg/hubble/metrics: flow, drop, tcp,
 * port-distribution handlers and hubble_lost_events_total), counted from the enriched flows the
 * pipeline emits. Note that the datapath aggregates (see DatapathConfig.monitorAggregation): an
 * established connection's packets are not each a flow, exactly as with Hubble on Cilium.
 *
 * The kitnet_* metrics describe the agent itself. Everything held elsewhere (store, BPF maps,
 * datapath counters, lost-event counters) is read lazily when scraped, never on the packet path.
 */

/** The agent's Prometheus registry. */
export class AgentMetrics {
  readonly registry = new Registry();
  private readonly flows: HubbleFlowMetrics;
  private readonly policyEntries: Gauge;
  private readonly onFlow = (r: HubbleFlowRecord) => this.flowObserve(r);
  private unobserve: (() => void) | undefined;
  /** Datapath counters read once per scrape, shared by the collectors of that scrape. */
  private datapathCache: { at: number; scrape: number; value: Record<MetricName, DatapathCounter> | undefined } = { at: 0, scrape: 0, value: undefined };
  private scrapes = 0;
  /** The text() call whose collectors are running (0: none; the registry read directly). */
  private scrape = 0;

  constructor(private readonly src: MetricsSources = {}) {
    // Registered in this order, which is the order of the exposition.
    this.flows = new HubbleFlowMetrics(this.registry, src);
    this.policyEntries = agentMetricsRegister(this.registry, src);
    datapathMetricsRegister(this.registry, src, () => this.datapathRead());
    if (src.flows?.batchObserve) this.unobserve = src.flows.batchObserve((events) => this.flowsCount(events));
    else src.flows?.on('flow', this.onFlow);
  }

  /** Counts a batch of decoded events as flowObserve counts the flows made from them. */
  flowsCount(events: readonly FlowEvent[]): void {
    this.flows.flowsCount(events);
  }

  private datapathRead(): Record<MetricName, DatapathCounter> | undefined {
    const read = this.src.datapath?.metricsRead;
    if (!read) return undefined;
    // The collectors of one scrape run back to back: read the per-CPU map once for all of them (per
    // text() call; a direct read of the registry reuses a read less than 100 ms old).
    const now = Date.now();
    const fresh = this.scrape !== 0 ? this.datapathCache.scrape === this.scrape : now - this.datapathCache.at <= 100;
    if (!fresh) {
      let value: Record<MetricName, DatapathCounter> | undefined;
      try {
        value = read.call(this.src.datapath);
      } catch {
        value = undefined;
      }
      this.datapathCache = { at: now, scrape: this.scrape, value };
    }
    return this.datapathCache.value;
  }

  /** Counts one flow as Hubble's flow, drop, tcp and port-distribution handlers do. */
  flowObserve(rec: HubbleFlowRecord): void {
    this.flows.flowObserve(rec);
  }

  /** Sets the number of policy map entries (when no `policyEntries` source reads it on scrape). */
  policyMapEntriesSet(entries: number): void {
    this.policyEntries.set(entries);
  }

  /** See workloadRegistrationObserve. */
  registrationObserve(seconds: number, outcome: 'success' | 'failure' = 'success', mode = ''): void {
    workloadRegistrationObserve(seconds, outcome, mode);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The text exposition format. */
  async text(): Promise<string> {
    const id = ++this.scrapes;
    this.scrape = id;
    try {
      return await this.registry.metrics();
    } finally {
      if (this.scrape === id) this.scrape = 0;
    }
  }

  /** Stops counting flows (the agent is stopping). */
  close(): void {
    if (this.unobserve) this.unobserve();
    else this.src.flows?.off('flow', this.onFlow);
    this.unobserve = undefined;
  }
}
