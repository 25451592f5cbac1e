import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { AgentApi, FlowRecord, FlowSelection } from '../agent-api.js';
import { FLOW_SHORTHAND_FIELDS, FlowsQuery, type FlowFilter } from '../../common/schemas/flows.js';

const line = (f: FlowRecord) => `${JSON.stringify(f)}\n`;
/** A follower further behind than this loses flows (counted and reported) instead of growing memory. */
const FOLLOW_BUFFER_LIMIT = 1 << 20;

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
      // Following without `last` starts from now, as `hubble observe --follow` does.
      const recent = req.query.follow && req.query.last === undefined ? [] : agent.flowsSelect(sel);
      if (!req.query.follow) {
        return reply.type('application/x-ndjson').send(recent.map(line).join(''));
      }
      const res = reply.raw;
      let missed = 0;
      const write = (r: FlowRecord) => {
        if (res.destroyed || res.writableEnded) return;
        if (res.writableLength > FOLLOW_BUFFER_LIMIT) {
          missed++;
          return;
        }
        if (missed > 0) {
          res.write(line(agent.flowsLost(missed)));
          missed = 0;
        }
        res.write(line(r));
      };
      // Subscribing compiles the filters: a bad one still fails as a clean 400 before the hijack.
      const unsubscribe = agent.flowsFollow(sel, write);
      reply.hijack();
      res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' });
      res.flushHeaders();
      for (const f of recent) write(f);
      const stop = () => unsubscribe();
      req.raw.on('close', stop);
      res.on('close', stop);
      res.on('error', stop);
    },
  );
};
