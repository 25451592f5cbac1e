import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { AgentApi } from '../agent-api.js';
import { ErrorBody } from '../../common/schemas/common.js';
import { POLICY_BODY_LIMIT } from '../security.js';
import { Namespace, NamespacePut, NamespaceRef, PolicyApplyResult, PolicyRef, PolicySummary, TraceRequest, TraceResponse, WorkloadPolicy } from '../../common/schemas/policy.js';
import { Workload, WorkloadPatch, WorkloadRef } from '../../common/schemas/workload.js';

const TEXT_TYPES = ['application/yaml', 'application/x-yaml', 'text/yaml', 'text/x-yaml', 'text/plain'];

export const policyRoutes: FastifyPluginAsyncZod<{ agent: AgentApi }> = async (app, { agent }) => {
  // Policy documents arrive as YAML (often several in one body); keep them as text for the parser.
  app.addContentTypeParser(TEXT_TYPES, { parseAs: 'string', bodyLimit: POLICY_BODY_LIMIT }, (_req, body, done) => done(null, body));

  app.get('/v1/namespaces', { schema: { summary: 'Namespaces with labels', response: { 200: z.array(Namespace) } } }, async () =>
    agent.namespaceList(),
  );
  app.put(
    '/v1/namespaces/:name',
    { schema: { summary: 'Set the labels of a namespace', params: NamespaceRef, body: NamespacePut, response: { 200: Namespace, '4xx': ErrorBody } } },
    async (req) => agent.namespacePut(req.params.name, req.body.labels),
  );

  app.get('/v1/policies', { schema: { summary: 'Stored policies', response: { 200: z.array(PolicySummary) } } }, async () => agent.policyList());
  app.put(
    '/v1/policies',
    {
      // YAML or JSON alike: up to 4 MiB of policy documents (other routes: 1 MiB).
      bodyLimit: POLICY_BODY_LIMIT,
      schema: {
        summary: 'Apply NetworkPolicy / CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy documents (YAML or JSON)',
        response: { 200: PolicyApplyResult, '4xx': ErrorBody },
      },
    },
    async (req) => agent.policiesApply(req.body, req.headers['content-type']),
  );
  app.delete(
    '/v1/policies/:kind/:namespace/:name',
    { schema: { summary: 'Delete a policy', params: PolicyRef, response: { 200: PolicySummary, '4xx': ErrorBody } } },
    async (req) => agent.policyDelete(req.params.kind, req.params.namespace, req.params.name),
  );
  app.post(
    '/v1/policy/trace',
    { schema: { summary: 'Verdict for a connection, from the compiled state the datapath enforces', body: TraceRequest, response: { 200: TraceResponse, '4xx': ErrorBody } } },
    async (req) => agent.policyTrace(req.body),
  );

  app.patch(
    '/v1/workloads/:namespace/:name',
    { schema: { summary: 'Replace the labels of a workload (its identity follows)', params: WorkloadRef, body: WorkloadPatch, response: { 200: Workload, '4xx': ErrorBody } } },
    async (req) => agent.workloadLabelsSet(req.params.namespace, req.params.name, req.body.labels),
  );
  app.get(
    '/v1/workloads/:namespace/:name/policy',
    { schema: { summary: 'Effective policy map entries of a workload', params: WorkloadRef, response: { 200: WorkloadPolicy, '4xx': ErrorBody } } },
    async (req) => agent.workloadPolicy(req.params.namespace, req.params.name),
  );
};
