import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { AgentApi, FlowRecord } from '../agent-api.js';
import { FlowsQuery } from '../schemas/flows.js';

const line = (f: FlowRecord) => `${JSON.stringify(f)}\n`;

export const flowRoutes: FastifyPluginAsyncZod<{ agent: AgentApi }> = async (app, { agent }) => {
  app.get(
    '/v1/flows',
    {
      schema: {
        summary: 'Recent flows as newline-delimited JSON in the shape of `hubble observe -o json`',
        querystring: FlowsQuery,
      },
    },
    async (req, reply) => {
      const recent = agent.flowsLast(req.query.last);
      if (!req.query.follow) {
        return reply.type('application/x-ndjson').send(recent.map(line).join(''));
      }
      // Follow: write straight to the socket, one flushed line per flow, until the client goes away.
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-cache' });
      for (const f of recent) res.write(line(f));
      const unsubscribe = agent.flowsFollow((f) => {
        if (!res.destroyed) res.write(line(f));
      });
      const stop = () => unsubscribe();
      req.raw.on('close', stop);
      res.on('error', stop);
    },
  );
};
