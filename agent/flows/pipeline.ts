import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { Datapath, FlowReader } from '../../bpf/index.js';
import type { EndpointDirectory } from './directory.js';
import { flowEnrich } from './enrich.js';
import type { HubbleFlowRecord, HubbleLostEventsRecord, LostEventSource } from './hubble.js';
import { Ring } from './ring.js';

/**
 * Ring buffer -> enrichment -> in-memory ring of recent flows, plus an emitter for live followers.
 * Runs on the event loop: the datapath's reader wakes it when the kernel has written events.
 */
export class FlowPipeline extends EventEmitter<{ flow: [HubbleFlowRecord]; lost: [HubbleLostEventsRecord] }> {
  readonly ring: Ring<HubbleFlowRecord>;
  private reader: FlowReader | undefined;
  private lostTimer: NodeJS.Timeout | undefined;
  private kernelLostSeen = 0n;
  processed = 0;
  /** Events lost, by where: the kernel ring buffer, or a follower's queue in the agent. */
  readonly lost: Record<LostEventSource, number> = { PERF_EVENT_RING_BUFFER: 0, OBSERVER_EVENTS_QUEUE: 0, HUBBLE_RING_BUFFER: 0 };

  constructor(
    private readonly directory: EndpointDirectory,
    private readonly nodeName: string,
    capacity: number,
    private readonly log: Logger,
  ) {
    super();
    this.setMaxListeners(0);
    this.ring = new Ring(capacity);
  }

  start(datapath: Datapath): void {
    this.reader = datapath.flowsRead((events) => {
      for (const ev of events) {
        const rec = flowEnrich(ev, this.directory, this.nodeName);
        this.ring.push(rec);
        this.processed++;
        if (this.listenerCount('flow')) this.emit('flow', rec);
      }
      this.kernelLostCheck();
    });
    // Losses in the kernel come with no event of their own; look once a second.
    this.lostTimer = setInterval(() => this.kernelLostCheck(), 1000);
    this.lostTimer.unref();
    this.log.debug('flow pipeline reading the datapath ring buffer');
  }

  private kernelLostCheck(): void {
    const total = this.reader?.lostEvents() ?? 0n;
    if (total <= this.kernelLostSeen) return;
    const delta = Number(total - this.kernelLostSeen);
    this.kernelLostSeen = total;
    this.lostRecord('PERF_EVENT_RING_BUFFER', delta);
  }

  /** Counts lost events and tells followers, as Hubble's `lost_events` records do. */
  lostRecord(source: LostEventSource, count: number): HubbleLostEventsRecord {
    this.lost[source] += count;
    const rec: HubbleLostEventsRecord = {
      lost_events: { source, num_events_lost: count, cpu: null },
      node_name: this.nodeName,
      time: new Date().toISOString(),
    };
    if (source !== 'OBSERVER_EVENTS_QUEUE') this.emit('lost', rec);
    return rec;
  }

  lostEvents(): number {
    return this.lost.PERF_EVENT_RING_BUFFER + this.lost.OBSERVER_EVENTS_QUEUE + this.lost.HUBBLE_RING_BUFFER;
  }

  stop(): void {
    if (this.lostTimer) clearInterval(this.lostTimer);
    this.reader?.close();
    this.reader = undefined;
  }
}
