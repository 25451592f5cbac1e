import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { AgentApi } from '../agent-api.js';
import { Identity } from '../../common/schemas/identity.js';
import { Status } from '../../common/schemas/status.js';
import { ClusterStatus } from '../../common/schemas/cluster.js';

export const systemRoutes: FastifyPluginAsyncZod<{ agent: AgentApi }> = async (app, { agent }) => {
  app.get('/healthz', { schema: { summary: 'Liveness', response: { 200: z.object({ ok: z.literal(true) }) } } }, async () => ({ ok: true as const }));
  app.get('/v1/status', { schema: { summary: 'Host, kernel and datapath status', response: { 200: Status } } }, async () => agent.status());
  app.get('/v1/cluster', { schema: { summary: 'Cluster mode: etcd, lease, heartbeat, nodes, counts and peer clusters', response: { 200: ClusterStatus } } }, async () => agent.clusterStatus());
  app.get('/v1/identities', { schema: { summary: 'Identities in use on this host', response: { 200: z.array(Identity) } } }, async () =>
    agent.identityList(),
  );
};
