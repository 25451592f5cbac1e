import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { Datapath, FlowReader } from '../../bpf/index.js';
import type { EndpointDirectory } from './directory.js';
import { flowEnrich } from './enrich.js';
import type { HubbleFlowRecord } from './hubble.js';
import { Ring } from './ring.js';

/**
 * Ring buffer -> enrichment -> in-memory ring of recent flows, plus an emitter for live followers.
 * Runs on the event loop: the datapath's reader wakes it when the kernel has written events.
 */
export class FlowPipeline extends EventEmitter<{ flow: [HubbleFlowRecord] }> {
  readonly ring: Ring<HubbleFlowRecord>;
  private reader: FlowReader | undefined;
  processed = 0;

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
    });
    this.log.debug('flow pipeline reading the datapath ring buffer');
  }

  lostEvents(): bigint {
    return this.reader?.lostEvents() ?? 0n;
  }

  stop(): void {
    this.reader?.close();
    this.reader = undefined;
  }
}
