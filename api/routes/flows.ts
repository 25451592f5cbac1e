import { Readable } from 'node:stream';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { AgentApi, FlowRecord, FlowSelection, FlowSnapshot } from '../agent-api.js';
import { KitnetError } from '../../common/errors.js';
import { FLOW_SHORTHAND_FIELDS, FlowsQuery, type FlowFilter } from '../../common/schemas/flows.js';

const line = (f: FlowRecord) => `${JSON.stringify(f)}\n`;
/** A follower further behind than this loses flows (counted and reported) instead of growing memory. */
export const FOLLOW_BUFFER_LIMIT = 1 << 20;
/**
 * Flows serialised at once for a reply without follow: a reply is made a slice at a time as its
 * client reads, so a client that does not read holds about this many (a slice, and the socket's
 * buffer), not the ring.
 */
export const FLOW_SLICE = 64;
/**
 * Replies without follow open at once on one agent (every listener): each counts until its client has
 * read it to the end or gone, so clients that do not read hold at most this many slices.
 */
export const FLOW_SNAPSHOT_STREAMS_MAX = 64;
/**
 * Follow streams open at once on one agent: each may hold FOLLOW_BUFFER_LIMIT for a client that does
 * not read, and costs a filter per flow.
 */
export const FLOW_FOLLOW_STREAMS_MAX = 64;
/**
 * Flow replies one connection may have open: HTTP/1.1 pipelining queues requests behind one another
 * on a connection and node runs the handlers of a whole pipelined packet at once; a client that is
 * not attacking has one.
 */
export const FLOW_STREAMS_PER_CONNECTION_MAX = 4;

interface FlowStreams {
  snapshots: number;
  followers: number;
  byConnection: WeakMap<object, number>;
}

// Per agent, not per server: the unix socket's and the TCP listener's APIs serve the same agent.
const streamsByAgent = new WeakMap<AgentApi, FlowStreams>();
function streamsOf(agent: AgentApi): FlowStreams {
  let s = streamsByAgent.get(agent);
  if (!s) streamsByAgent.set(agent, (s = { snapshots: 0, followers: 0, byConnection: new WeakMap() }));
  return s;
}

/** GET /v1/flows replies open now on this agent: without follow, and follow streams. */
export function flowStreamsOpen(agent: AgentApi): { snapshots: number; followers: number } {
  const s = streamsOf(agent);
  return { snapshots: s.snapshots, followers: s.followers };
}

/** Counts a reply on `connection` until the returned release is called; a 429 over a limit. */
function flowStreamAdmit(agent: AgentApi, connection: object, kind: 'snapshots' | 'followers'): () => void {
  const s = streamsOf(agent);
  const onConnection = s.byConnection.get(connection) ?? 0;
  if (onConnection >= FLOW_STREAMS_PER_CONNECTION_MAX)
    throw new KitnetError('AGENT_ERR_API_TOO_MANY_STREAMS', `too many flow replies on this connection (${FLOW_STREAMS_PER_CONNECTION_MAX} GET /v1/flows at once); read or close one and retry`);
  if (kind === 'snapshots' && s.snapshots >= FLOW_SNAPSHOT_STREAMS_MAX)
    throw new KitnetError('AGENT_ERR_API_TOO_MANY_STREAMS', `too many flow replies (${FLOW_SNAPSHOT_STREAMS_MAX} GET /v1/flows without follow at once, not yet read to their end); read or close one and retry`);
  if (kind === 'followers' && s.followers >= FLOW_FOLLOW_STREAMS_MAX)
    throw new KitnetError('AGENT_ERR_API_TOO_MANY_STREAMS', `too many follow streams (${FLOW_FOLLOW_STREAMS_MAX} GET /v1/flows?follow=true at once); close one and retry`);
  s[kind]++;
  s.byConnection.set(connection, onConnection + 1);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    s[kind]--;
    const left = (s.byConnection.get(connection) ?? 1) - 1;
    if (left > 0) s.byConnection.set(connection, left);
    else s.byConnection.delete(connection);
  };
}

/** The NDJSON of a snapshot, FLOW_SLICE flows a chunk, each made when the reply wants more. */
function* ndjsonSlices(snapshot: FlowSnapshot): Generator<string> {
  for (;;) {
    const flows = snapshot.read(FLOW_SLICE);
    if (flows.length === 0) return;
    yield flows.map(line).join('');
  }
}

/** Shorthand query parameters form one more whitelist filter. */
export function selectionFromQuery(q: FlowsQuery): FlowSelection {
  const shorthand: Record<string, unknown> = {};
  for (const f of FLOW_SHORTHAND_FIELDS) if (q[f] !== undefined) shorthand[f] = q[f];
  const whitelist = [...(q.whitelist ?? []), ...(Object.keys(shorthand).length ? [shorthand as FlowFilter] : [])];
  return {
    whitelist,
    blacklist: q.blacklist ?? [],
    ...(q.last !== undefined ? { last: q.last } : {}),
    ...(q.since ? { since: q.since } : {}),
    ...(q.until ? { until: q.until } : {}),
  };
}

export const flowRoutes: FastifyPluginAsyncZod<{ agent: AgentApi }> = async (app, { agent }) => {
  app.get(
    '/v1/flows',
    {
      schema: {
        summary: 'Flows as newline-delimited JSON in the shape of `hubble observe -o json`, with Hubble-style filters',
        querystring: FlowsQuery,
      },
    },
    async (req, reply) => {
      const sel = selectionFromQuery(req.query);
      if (!req.query.follow) {
        // Compiles the filters first: a bad one is a 400, whatever the limits.
        const snapshot = agent.flowsSnapshot(sel);
        const socket = req.raw.socket;
        const release = flowStreamAdmit(agent, socket, 'snapshots');
        const body = Readable.from(ndjsonSlices(snapshot), { objectMode: false });
        // A response ends ('close') once its last slice is handed to the kernel or its connection
        // went away, and fastify then destroys the body (the generator ends). A pipelined request
        // queued behind another has no 'close' of its own when the connection goes: its socket's.
        const gone = () => {
          release();
          body.destroy();
        };
        socket.once('close', gone);
        reply.raw.once('close', () => {
          socket.off('close', gone);
          release();
        });
        return reply.type('application/x-ndjson; charset=utf-8').send(body);
      }
      // Following without `last` starts from now, as `hubble observe --follow` does; with it, the
      // ring's part is sent as the client reads it (as without follow), the flows that come
      // meanwhile queued behind it within the follower's buffer.
      let snapshot = req.query.last === undefined ? undefined : agent.flowsSnapshot(sel);
      const res = reply.raw;
      const socket = req.raw.socket;
      let pending: string[] = [];
      let pendingBytes = 0;
      let missed = 0;
      let ended = false;
      // Following up to a time (`until`): the stream ends then, once what it had to send is sent, as
      // Hubble's GetFlows does (a timer: no flow may come to end it).
      let untilPassed = false;
      let untilTimer: NodeJS.Timeout | undefined;
      const lostFlush = () => {
        if (missed === 0) return;
        res.write(line(agent.flowsLost(missed)));
        missed = 0;
      };
      const live = (r: FlowRecord) => {
        if (ended || res.destroyed || res.writableEnded) return;
        if (res.writableLength + pendingBytes > FOLLOW_BUFFER_LIMIT) {
          missed++;
          return;
        }
        const l = line(r);
        if (snapshot) {
          pending.push(l);
          pendingBytes += l.length;
          return;
        }
        lostFlush();
        res.write(l);
      };
      // Written until the socket is full, continued on 'drain'; a follower that caught up after losing
      // flows hears of it then, not only when the next flow comes.
      const pump = () => {
        while (snapshot && !ended) {
          const flows = snapshot.read(FLOW_SLICE);
          if (flows.length === 0) snapshot = undefined;
          else if (!res.write(flows.map(line).join(''))) return;
        }
        if (ended || res.destroyed) return;
        if (pending.length > 0) res.write(pending.join(''));
        pending = [];
        pendingBytes = 0;
        lostFlush();
        if (untilPassed) {
          stop();
          res.end();
        }
      };
      // Subscribing compiles the filters: a bad one still fails as a clean 400 before the hijack.
      const unsubscribe = agent.flowsFollow(sel, live);
      let release: () => void;
      try {
        release = flowStreamAdmit(agent, socket, 'followers');
      } catch (err) {
        unsubscribe();
        throw err;
      }
      const stop = () => {
        if (ended) return;
        ended = true;
        if (untilTimer) clearTimeout(untilTimer);
        unsubscribe();
        release();
        snapshot = undefined;
        pending = [];
        res.off('drain', pump);
        socket.off('close', stop);
      };
      reply.hijack();
      res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' });
      res.flushHeaders();
      res.on('drain', pump);
      req.raw.on('close', stop);
      res.on('close', stop);
      res.on('error', stop);
      // A pipelined request queued behind another has no 'close' of its own when the connection goes.
      socket.once('close', stop);
      const until = req.query.until ? Date.parse(req.query.until) : undefined;
      if (until !== undefined) {
        const passed = () => {
          untilPassed = true;
          if (!snapshot) pump(); // else the ring's part ends it, once sent
        };
        if (until <= Date.now()) untilPassed = true;
        else untilTimer = setTimeout(passed, Math.min(until - Date.now(), 2 ** 31 - 1));
      }
      pump();
    },
  );
};
