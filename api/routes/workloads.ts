import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { AgentApi } from '../agent-api.js';
import { ErrorBody } from '../../common/schemas/common.js';
import { principalOf } from '../security.js';
import { Workload, WorkloadCreate, WorkloadListQuery, WorkloadRef } from '../../common/schemas/workload.js';

export const workloadRoutes: FastifyPluginAsyncZod<{ agent: AgentApi }> = async (app, { agent }) => {
  app.post(
    '/v1/workloads',
    {
      schema: {
        summary: 'Register a workload: creates its devices, addresses, identity and datapath',
        body: WorkloadCreate,
        response: { 201: Workload, '4xx': ErrorBody, '5xx': ErrorBody },
      },
    },
    async (req, reply) => {
      // Without a principal the listener is trusted (the unix socket without the security layer).
      const who = principalOf(req);
      return reply.code(201).send(await agent.workloadRegister(req.body, { admin: !who || who.scopes.has('admin') }));
    },
  );

  app.get(
    '/v1/workloads',
    { schema: { summary: 'List workloads', querystring: WorkloadListQuery, response: { 200: z.array(Workload) } } },
    async (req) => agent.workloadList(req.query.namespace),
  );

  app.get(
    '/v1/workloads/:namespace/:name',
    { schema: { summary: 'Get one workload', params: WorkloadRef, response: { 200: Workload, '4xx': ErrorBody } } },
    async (req) => agent.workloadGet(req.params.namespace, req.params.name),
  );

  // Shorthand for the `default` namespace: GET /v1/workloads/NAME.
  app.get(
    '/v1/workloads/:name',
    { schema: { summary: 'Get a workload of the default namespace', params: WorkloadRef.pick({ name: true }), response: { 200: Workload, '4xx': ErrorBody } } },
    async (req) => agent.workloadGet('default', req.params.name),
  );

  app.delete(
    '/v1/workloads/:namespace/:name',
    { schema: { summary: 'Remove a workload and everything kitnet made for it', params: WorkloadRef, response: { 200: Workload, '4xx': ErrorBody, '5xx': ErrorBody } } },
    async (req) => agent.workloadRemove(req.params.namespace, req.params.name),
  );
};
