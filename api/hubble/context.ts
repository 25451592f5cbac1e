import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import type { HubbleBackend } from './backend.js';

/** What every Hubble service shares: the backend once the agent serves, and facts about the listener. */
export interface HubbleContext {
  /** undefined while the agent is still starting (restoring workloads). */
  backend(): HubbleBackend | undefined;
  startingError(): ServiceError;
  uptimeNs(): number;
  /** Where clients reach this node (host:port of the TCP listener, else unix://socket). */
  address(): string;
  tls: { enabled: boolean; serverName: string };
  /** A follower further behind than this many flows loses flows (config hubble.followQueue). */
  followQueue: number;
  /** Stops of the open follow streams (closing the server ends them). */
  followers: Set<() => void>;
  /**
   * The GetFlows streams without follow that are still open (SNAPSHOT_STREAMS_MAX): each one's stop,
   * and how many messages it has queued (written, not yet handed to HTTP/2).
   */
  snapshots: Map<() => void, () => number>;
  /** Called once when the agent starts serving (health Watch streams tell their clients). */
  servingWaiters: Set<() => void>;
}

/**
 * Streams that stay open (follow, Peer.Notify, health Watch) at once, over all clients: each holds
 * listeners and up to hubble.followQueue queued messages, so a client opening thousands cannot
 * exhaust the agent's memory.
 */
export const OPEN_STREAMS_MAX = 64;

/** RESOURCE_EXHAUSTED when OPEN_STREAMS_MAX streams are open; undefined when one more may open. */
export function streamRefusal(ctx: HubbleContext): ServiceError | undefined {
  if (ctx.followers.size < OPEN_STREAMS_MAX) return undefined;
  return grpcError(status.RESOURCE_EXHAUSTED, `too many open streams (${OPEN_STREAMS_MAX} follow, Notify and Watch streams at once); close one and retry`);
}

/**
 * GetFlows streams without follow open at once, over all clients. Such a stream sends the selection
 * as fast as its client reads, no faster (a client that does not read holds at most the stream's
 * buffer, 16 messages, in the agent), and it stays open until the client has read it or went away: a
 * client opening thousands without reading cannot make the agent keep thousands of selections.
 */
export const SNAPSHOT_STREAMS_MAX = 64;

/** RESOURCE_EXHAUSTED when SNAPSHOT_STREAMS_MAX GetFlows streams without follow are open. */
export function snapshotRefusal(ctx: HubbleContext): ServiceError | undefined {
  if (ctx.snapshots.size < SNAPSHOT_STREAMS_MAX) return undefined;
  return grpcError(status.RESOURCE_EXHAUSTED, `too many open streams (${SNAPSHOT_STREAMS_MAX} GetFlows streams without follow at once, not yet read to their end); read or close one and retry`);
}

/**
 * HTTP/2 streams one connection may have open (grpc.max_concurrent_streams): every stream a client
 * may hold across the server (OPEN_STREAMS_MAX, SNAPSHOT_STREAMS_MAX) and room for unary calls, so
 * that one connection (a relay's, carrying many clients) is not cut short of them, but no connection
 * has an unbounded number of calls in progress. A client past it waits for a stream to end.
 */
export const CONNECTION_STREAMS_MAX = OPEN_STREAMS_MAX + SNAPSHOT_STREAMS_MAX + 32;

export function grpcError(code: status, details: string): ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new Metadata() });
}

export function hubbleContext(address: () => string, tls: { enabled: boolean; serverName: string }, followQueue: number): HubbleContext & { serve(b: HubbleBackend): void } {
  let backend: HubbleBackend | undefined;
  const started = process.hrtime.bigint();
  return {
    backend: () => backend,
    serve(b) {
      backend = b;
      for (const w of [...this.servingWaiters]) w();
      this.servingWaiters.clear();
    },
    startingError: () => grpcError(status.UNAVAILABLE, 'AGENT_ERR_API_STARTING: the kitnet agent is starting (restoring its workloads); retry shortly'),
    uptimeNs: () => Number(process.hrtime.bigint() - started),
    address,
    tls,
    followQueue,
    followers: new Set(),
    snapshots: new Map(),
    servingWaiters: new Set(),
  };
}
