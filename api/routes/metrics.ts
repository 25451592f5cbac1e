import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { AgentApi } from '../agent-api.js';

/** What an agent offers for scraping (agent/metrics.ts AgentMetrics fits). */
export interface MetricsExposition {
  readonly contentType: string;
  text(): Promise<string>;
}

/** `GET /metrics`: the Prometheus text format (Hubble's flow metrics and the agent's own). */
export const metricsRoutes: FastifyPluginAsyncZod<{ agent: AgentApi & { metrics?: MetricsExposition } }> = async (app, { agent }) => {
  app.get(
    '/metrics',
    { schema: { summary: 'Prometheus metrics: hubble_* flow metrics and kitnet_* agent metrics (text exposition format)' } },
    async (_req, reply) => {
      const metrics = agent.metrics;
      if (!metrics) {
        return reply.code(404).send({ statusCode: 404, code: 'AGENT_ERR_API_NOT_FOUND', error: 'Not Found', message: 'this agent exports no metrics' });
      }
      const text = await metrics.text();
      return reply.type(metrics.contentType).header('cache-control', 'no-store').send(text);
    },
  );
};
