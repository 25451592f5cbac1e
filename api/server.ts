import swagger from '@fastify/swagger';
import Fastify, { type FastifyInstance, type FastifyServerFactory } from 'fastify';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Logger } from 'pino';
import type { AgentApi } from './agent-api.js';
import type { ConfigReloadResult } from '../common/schemas/config.js';
import { errorHandler } from './errors.js';
import { configRoutes } from './routes/config.js';
import { flowRoutes } from './routes/flows.js';
import { metricsRoutes } from './routes/metrics.js';
import { uiRoutes } from './routes/ui.js';
import { policyRoutes } from './routes/policies.js';
import { API_BODY_LIMIT, requestLogSerializer, securityRegister, type SecurityOptions } from './security.js';
import { systemRoutes } from './routes/system.js';
import { workloadRoutes } from './routes/workloads.js';

export interface ServerOptions {
  agent: AgentApi;
  logger: Logger | false;
  version: string;
  /** TLS for a TCP listener (PEM); the unix socket has none. */
  https?: { cert: Buffer; key: Buffer } | undefined;
  /** Tokens, rate limit and audit (api/security.ts); absent: a trusted listener without limits or audit. */
  security?: SecurityOptions | undefined;
  /** A server bound beforehand (api/listener.ts): the API is built on it; `https` then belongs to it. */
  serverFactory?: FastifyServerFactory | undefined;
  /** Re-reads the config file (POST /v1/config/reload); absent: no such route (no daemon behind). */
  configReload?: (() => ConfigReloadResult) | undefined;
}

/** Builds the REST API (not listening yet): routes, zod validation, OpenAPI at /docs/json. */
export async function serverBuild(opts: ServerOptions): Promise<FastifyInstance> {
  // Typed loosely at the boundary: callers only listen, inject and close.
  const app = Fastify({
    // Request log lines with credentials in the query string redacted (fastify's own serializer logs the URL as is).
    loggerInstance: opts.logger ? opts.logger.child({}, { serializers: { req: requestLogSerializer } }) : undefined,
    logger: opts.logger ? undefined : false,
    bodyLimit: API_BODY_LIMIT,
    ...(opts.serverFactory ? { serverFactory: opts.serverFactory } : opts.https ? { https: opts.https } : {}),
    // Follow streams never end by themselves; closing the server must not wait for them.
    forceCloseConnections: true,
  }).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler(errorHandler);
  // Several HTTP clients send `content-type: application/json` on every request, a DELETE without a
  // body included: an empty JSON body is no body (a route that needs one says so in its validation).
  const jsonParse = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    if (body.length === 0) return done(null, undefined);
    jsonParse(req, body as string, done);
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ statusCode: 404, code: 'AGENT_ERR_API_NOT_FOUND', error: 'Not Found', message: `no route ${req.method} ${req.url}` });
  });

  await app.register(swagger, {
    openapi: { info: { title: 'kitnet agent API', version: opts.version, description: 'Register workloads, read identities, status and flows.' } },
    transform: jsonSchemaTransform,
  });
  // Before the routes: its hooks must cover every route and the 404 handler.
  if (opts.security) await securityRegister(app as unknown as FastifyInstance, opts.security);
  await app.register(systemRoutes, { agent: opts.agent });
  await app.register(workloadRoutes, { agent: opts.agent });
  await app.register(flowRoutes, { agent: opts.agent });
  await app.register(metricsRoutes, { agent: opts.agent });
  await app.register(uiRoutes);
  await app.register(policyRoutes, { agent: opts.agent });
  if (opts.configReload) await app.register(configRoutes, { reload: opts.configReload });
  app.get('/docs/json', { schema: { hide: true } }, async () => app.swagger());
  await app.ready();
  return app as unknown as FastifyInstance;
}
