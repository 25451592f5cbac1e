import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { KitnetError } from '../common/errors.js';
import { UNIX_PRINCIPAL, type Principal, type TokenSet } from '../common/tokens.js';

// The tokens themselves (file schema, loading, hashing) live in common/, below the daemon that loads them.
export { SCOPES, TokenSet, globMatcher, tokenGenerate, tokenHash, tokensLoad, type Principal, type Scope, type TokenEntry } from '../common/tokens.js';

/**
 * The API's security layer. The unix socket is trusted: its file mode and group are the
 * authentication. The TCP listener (TLS only) needs a bearer token with scopes:
 *   read     GET anything (workloads, identities, status, flows, policies, namespaces, metrics), policy trace
 *   register add, remove and relabel workloads, only in the token's namespaces (and, when the
 *            token lists them, only into netns paths / tap devices matching its patterns)
 *   admin    everything, including policies and namespaces
 * Tokens are kept as SHA-256 hashes and compared in constant time. Every request is rate limited
 * per client (token name, else address; one bucket for the socket) and every change is audited.
 */

/** Body limits: 1 MiB for JSON requests, 4 MiB for policy documents. */
export const API_BODY_LIMIT = 1 << 20;
export const POLICY_BODY_LIMIT = 4 << 20;

/** pino redaction: credentials never reach a log line, whatever logs a request or its headers. */
export const LOG_REDACT = {
  paths: [
    'req.headers.authorization',
    'req.headers.cookie',
    'request.headers.authorization',
    'headers.authorization',
    'headers.cookie',
    'authorization',
    '*.headers.authorization',
    '*.*.headers.authorization',
    '*.headers.cookie',
    '*.authorization',
    'token',
    'secret',
    '*.secret',
  ],
  censor: '[redacted]',
};

/** Query parameters whose values are credentials (`?token=`, `?access_token=`, `?api_key=`, ...). */
const SECRET_PARAM = /token|secret|passw|auth|key|sig|session|cookie|credential/i;

/**
 * A request URL for a log line: credentials in the query string become `[redacted]`. The API takes
 * tokens only from the Authorization header, but a client that puts one in the URL must not see it
 * land in the journal.
 */
export function urlRedact(url: string): string {
  const q = url.indexOf('?');
  if (q < 0) return url;
  const query = url
    .slice(q + 1)
    .split('&')
    .map((pair) => {
      const eq = pair.indexOf('=');
      const name = eq < 0 ? pair : pair.slice(0, eq);
      let decoded = name;
      try {
        decoded = decodeURIComponent(name.replace(/\+/g, ' '));
      } catch {
        // a malformed escape: judge the raw name
      }
      return eq >= 0 && SECRET_PARAM.test(decoded) ? `${name}=[redacted]` : pair;
    })
    .join('&');
  return `${url.slice(0, q)}?${query}`;
}

/** fastify's request serializer for log lines, with the URL's credentials redacted. */
export function requestLogSerializer(req: FastifyRequest): Record<string, unknown> {
  return {
    method: req.method,
    url: urlRedact(req.url),
    host: req.host,
    remoteAddress: req.ip,
    remotePort: req.socket?.remotePort,
  };
}

/** What a route needs: `public` (liveness only), a scope, or register rights on a namespace. */
export type Access = { scope: 'public' } | { scope: 'read' } | { scope: 'admin' } | { scope: 'register'; namespace: (req: FastifyRequest) => string | undefined };

const paramNamespace = (req: FastifyRequest) => (req.params as { namespace?: string } | undefined)?.namespace;
const bodyNamespace = (req: FastifyRequest) => {
  const body = req.body as { namespace?: unknown } | undefined;
  return typeof body?.namespace === 'string' ? body.namespace : undefined;
};

/**
 * The access a method and route pattern need. Reads are `read`; workload changes are `register`;
 * anything else that changes state, including routes added later, is `admin` (fails closed).
 */
export function routeAccess(method: string, url: string | undefined): Access {
  if (url === '/healthz' && (method === 'GET' || method === 'HEAD')) return { scope: 'public' };
  if (method === 'GET' || method === 'HEAD') return { scope: 'read' };
  if (method === 'POST' && url === '/v1/policy/trace') return { scope: 'read' };
  if (method === 'POST' && url === '/v1/workloads') return { scope: 'register', namespace: bodyNamespace };
  if ((method === 'DELETE' || method === 'PATCH') && url === '/v1/workloads/:namespace/:name') return { scope: 'register', namespace: paramNamespace };
  return { scope: 'admin' };
}

/**
 * Why a (non-admin) token may not register into this namespace path or adopt this tap, if it may not.
 * kind vm without `netns` gets a namespace kitnet makes: no pattern applies.
 */
export function registerTargetProblem(who: Principal, body: { kind?: string; netns?: string; device?: string }): string | undefined {
  const name = who.who.replace(/^token:/, '');
  if (body.kind === 'tap') {
    const device = body.device ?? '';
    if (!who.taps?.length) return `token "${name}" may not adopt tap devices (it lists no taps patterns)`;
    if (!who.taps.some((p) => p.matches(device))) return `token "${name}" may not adopt device "${device}": it matches none of ${who.taps.map((p) => p.glob).join(', ')}`;
    return undefined;
  }
  if (body.netns === undefined || !who.netns) return undefined;
  const path = body.netns;
  if (!who.netns.some((p) => p.matches(path))) return `token "${name}" may not use netns ${path}: it matches none of ${who.netns.map((p) => p.glob).join(', ')}`;
  return undefined;
}

const isChange = (method: string, url: string | undefined) => !['GET', 'HEAD', 'OPTIONS'].includes(method) && routeAccess(method, url).scope !== 'read';

/** The least /healthz answers per window and client, whatever the configured limit. */
export const HEALTHZ_MIN_MAX = 600;

export interface RateLimitSettings {
  /** Requests per window per client. */
  max: number;
  windowMs: number;
}

/** Where audit lines go (a pino logger fits). */
export interface AuditSink {
  info(obj: Record<string, unknown>, msg: string): void;
}

export interface SecurityOptions {
  /** Bearer tokens for this listener; without, the listener is trusted (the unix socket). */
  tokens?: TokenSet | undefined;
  rateLimit?: RateLimitSettings | false | undefined;
  /** Where audit lines go; without, no audit. */
  audit?: AuditSink | false | undefined;
}

const principals = new WeakMap<object, Principal>();
const auditRefs = new WeakMap<object, string[]>();

/** The principal of a request that passed authentication. */
export function principalOf(req: FastifyRequest): Principal | undefined {
  return principals.get(req.raw);
}

function denied(reply: FastifyReply, status: 401 | 403, message: string): KitnetError {
  if (status === 401) void reply.header('www-authenticate', 'Bearer realm="kitnet"');
  return new KitnetError(status === 401 ? 'AGENT_ERR_API_UNAUTHORIZED' : 'AGENT_ERR_API_FORBIDDEN', message);
}

/** What a change was about, for the audit line: `NS/NAME` of a workload or policy, a namespace. */
function auditRef(req: FastifyRequest): string | undefined {
  const p = (req.params ?? {}) as Record<string, unknown>;
  const clip = (v: unknown) => String(v).slice(0, 253);
  if (typeof p.kind === 'string') return `${clip(p.kind)}/${clip(p.namespace)}/${clip(p.name)}`;
  if (typeof p.namespace === 'string' && typeof p.name === 'string') return `${clip(p.namespace)}/${clip(p.name)}`;
  if (typeof p.name === 'string') return clip(p.name);
  const b = req.body as { namespace?: unknown; name?: unknown } | undefined;
  if (b && typeof b === 'object' && typeof b.name === 'string') return `${typeof b.namespace === 'string' ? clip(b.namespace) : 'default'}/${clip(b.name)}`;
  return undefined;
}

/**
 * Adds authentication, authorization, rate limiting and auditing to an API instance. Must be called
 * before the routes are registered (the hooks apply to the routes added afterwards and to 404s).
 */
export async function securityRegister(app: FastifyInstance, opts: SecurityOptions): Promise<void> {
  const { tokens, audit } = opts;
  let limiter: ((req: FastifyRequest, reply: FastifyReply) => Promise<void>) | undefined;
  let healthzLimiter: typeof limiter;
  if (opts.rateLimit) {
    await app.register(rateLimit, {
      global: false,
      max: opts.rateLimit.max,
      timeWindow: opts.rateLimit.windowMs,
      // Clients are few (one socket, a handful of tokens and addresses); the cache only bounds memory.
      cache: 10_000,
      keyGenerator: (req) => principalOf(req)?.who ?? (tokens ? `addr:${req.ip}` : UNIX_PRINCIPAL.who),
      errorResponseBuilder: (_req, ctx) =>
        new KitnetError('AGENT_ERR_API_RATE_LIMITED', `rate limit of ${ctx.max} requests exceeded; retry in ${ctx.after}`),
    });
    limiter = app.rateLimit() as unknown as typeof limiter;
    // /healthz has buckets of its own, per client like the others: a client guessing tokens (or
    // flooding anything else) must not make liveness fail with 429. Generous, it is cheap to answer.
    healthzLimiter = app.rateLimit({
      max: Math.max(HEALTHZ_MIN_MAX, opts.rateLimit.max),
      keyGenerator: (req: FastifyRequest) => `healthz:${tokens ? req.ip : UNIX_PRINCIPAL.who}`,
    }) as unknown as typeof limiter;
  }

  app.addHook('onRequest', async (req, reply) => {
    const access = routeAccess(req.method, req.routeOptions.url);
    if (access.scope === 'public') {
      if (healthzLimiter) await healthzLimiter(req, reply);
      return;
    }
    // Authenticate first (without failing yet) so the limiter counts per token; then limit, so
    // guessing tokens is rate limited too; then fail.
    const outcome = tokens ? tokens.authenticate(req.headers.authorization) : UNIX_PRINCIPAL;
    if (typeof outcome !== 'string') principals.set(req.raw, outcome);
    if (limiter) await limiter(req, reply);
    if (outcome === 'missing') throw denied(reply, 401, 'this API needs a bearer token (Authorization: Bearer TOKEN)');
    if (outcome === 'invalid') throw denied(reply, 401, 'the bearer token is not valid');
    if (outcome.scopes.has('admin')) return;
    const need = access.scope === 'read' ? 'read' : access.scope === 'register' ? 'register' : 'admin';
    if (!outcome.scopes.has(need)) {
      throw denied(reply, 403, `token "${outcome.who.slice(6)}" lacks the ${need} scope needed for ${req.method} ${req.routeOptions.url ?? 'this path'}`);
    }
  });

  // The namespace of a registration is in the body: checked once it is parsed and validated.
  app.addHook('preHandler', async (req, reply) => {
    const access = routeAccess(req.method, req.routeOptions.url);
    const who = principalOf(req);
    if (access.scope !== 'register' || !who || who.scopes.has('admin')) return;
    const ns = access.namespace(req) ?? 'default';
    if (!who.namespaces.has('*') && !who.namespaces.has(ns)) throw denied(reply, 403, `token "${who.who.slice(6)}" may not change workloads in namespace "${ns}"`);
    if (req.method === 'POST') {
      const problem = registerTargetProblem(who, req.body as { kind?: string; netns?: string; device?: string });
      if (problem) throw denied(reply, 403, problem);
    }
  });

  if (!audit) return;
  // Policy documents name their policies only in the result: keep those names for the audit line.
  app.addHook('preSerialization', async (req, _reply, payload) => {
    const applied = (payload as { applied?: Array<{ kind: string; namespace: string; name: string }> } | null)?.applied;
    if (req.method === 'PUT' && Array.isArray(applied)) auditRefs.set(req.raw, applied.slice(0, 50).map((a) => `${a.kind}/${a.namespace}/${a.name}`));
    return payload;
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url;
    if (!isChange(req.method, route)) return;
    const ref = auditRefs.get(req.raw) ?? auditRef(req);
    audit.info(
      {
        audit: true,
        who: principalOf(req)?.who ?? (tokens ? `unauthenticated:${req.ip}` : UNIX_PRINCIPAL.who),
        method: req.method,
        // The route pattern; a path that matched no route is clipped (it is the client's input).
        route: route ?? urlRedact(req.url).slice(0, 200),
        ...(ref ? { ref } : {}),
        status: reply.statusCode,
        reqId: req.id,
      },
      'audit',
    );
  });
}
