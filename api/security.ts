import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ConfigError, zodIssuesFormat } from '../agent/config.js';
import { KitnetError } from '../common/errors.js';
import { yamlFileRead, yamlNestingProblem } from '../common/yaml-guard.js';

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

export const SCOPES = ['read', 'register', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

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

const TOKEN_PREFIX = 'kn_';

/** A new random token secret (256 bits); only its hash goes into the tokens file. */
export function tokenGenerate(): string {
  return `${TOKEN_PREFIX}${randomBytes(32).toString('base64url')}`;
}

/** The hex SHA-256 of a token secret, as the tokens file stores it (`secretSha256`). */
export function tokenHash(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/**
 * Token patterns (`netns`, `taps`): shell-like globs matched against the whole string as written.
 * `*` is any run of characters except "/", `?` one character except "/", everything else is literal
 * (no classes, braces or escapes). So `/var/run/netns/tenant-a-*` matches `/var/run/netns/tenant-a-1`
 * but not `/var/run/netns/tenant-a-1/x` or `/run/netns/tenant-a-1` (no symlinks are resolved).
 */
export function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]');
  return new RegExp(`^${body}$`);
}

const plainPath = (p: string) => p.split('/').slice(1).every((seg) => seg !== '' && seg !== '.' && seg !== '..');

const NetnsPattern = z
  .string()
  .max(4096)
  .regex(/^\//, 'must be an absolute path pattern such as /var/run/netns/tenant-a-*')
  .refine(plainPath, 'must be a plain path (no "//", "." or ".." segments, no trailing "/")');
const TapPattern = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9_.*?-]+$/, 'must be an interface name pattern: letters, digits, "_", ".", "-" and the wildcards "*" and "?"');

const TokenEntry = z
  .object({
    name: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$/, 'must be 1-64 characters of [A-Za-z0-9_.@-] (it appears in audit lines)'),
    secretSha256: z
      .string()
      .regex(/^[0-9a-fA-F]{64}$/, 'must be the hex SHA-256 of the secret (kitnet token hash)')
      .optional(),
    secret: z.string().min(16, 'must be at least 16 characters; better store secretSha256').max(4096).optional(),
    scopes: z.array(z.enum(SCOPES)).min(1, 'needs at least one of read, register, admin'),
    namespaces: z
      .array(z.string().regex(/^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$/, 'must be a namespace name or "*"'))
      .optional(),
    /** register: the netns paths (kind netns, kind vm adopting one) this token may use; absent = any. */
    netns: z.array(NetnsPattern).max(256).optional(),
    /** register: the tap devices (kind tap) this token may adopt; absent = none. */
    taps: z.array(TapPattern).max(256).optional(),
  })
  .strict()
  .superRefine((t, ctx) => {
    if ((t.secretSha256 === undefined) === (t.secret === undefined)) {
      ctx.addIssue({ code: 'custom', message: 'needs exactly one of secretSha256 (preferred) or secret', path: ['secretSha256'] });
    }
    if (t.scopes.includes('register') && !t.scopes.includes('admin') && !t.namespaces?.length) {
      ctx.addIssue({ code: 'custom', message: 'the register scope needs a list of namespaces (["*"] for all)', path: ['namespaces'] });
    }
  });
export type TokenEntry = z.infer<typeof TokenEntry>;

const TokensFile = z
  .array(TokenEntry)
  .min(1, 'lists no tokens: the TCP API would let no one in')
  .superRefine((list, ctx) => {
    const names = new Set<string>();
    const hashes = new Set<string>();
    list.forEach((t, i) => {
      if (names.has(t.name)) ctx.addIssue({ code: 'custom', message: `token name "${t.name}" is used twice`, path: [i, 'name'] });
      names.add(t.name);
      const h = (t.secretSha256 ?? tokenHash(t.secret ?? '')).toLowerCase();
      if (hashes.has(h)) ctx.addIssue({ code: 'custom', message: 'two tokens share one secret', path: [i, 'secretSha256'] });
      hashes.add(h);
    });
  });

/** Who made a request: a token (TCP) or the trusted unix socket. */
export interface Principal {
  /** `token:NAME` or `unix-socket`: what audit lines and rate-limit buckets use. */
  who: string;
  scopes: ReadonlySet<Scope>;
  /** Namespaces a register-scoped token may change; `*` for all. */
  namespaces: ReadonlySet<string>;
  /** Patterns a netns path must match (kind netns, vm adopting one); undefined = any path. */
  netns?: ReadonlyArray<{ glob: string; re: RegExp }> | undefined;
  /** Patterns a tap device must match (kind tap); undefined = no tap may be adopted. */
  taps?: ReadonlyArray<{ glob: string; re: RegExp }> | undefined;
}

const patternsCompile = (globs: string[] | undefined) => globs?.map((glob) => ({ glob, re: globToRegExp(glob) }));

const UNIX_PRINCIPAL: Principal = { who: 'unix-socket', scopes: new Set(SCOPES), namespaces: new Set(['*']) };

interface StoredToken {
  principal: Principal;
  hash: Buffer;
}

/** The tokens of the TCP listener; authenticates `Authorization: Bearer ...` headers. */
export class TokenSet {
  private tokens: StoredToken[];
  /** Names of tokens given with a plaintext `secret` (the daemon warns about them). */
  plaintext: string[];

  /** `compare` is for tests (they count comparisons); it must be constant-time. */
  constructor(
    entries: TokenEntry[],
    private readonly compare: (a: Buffer, b: Buffer) => boolean = timingSafeEqual,
  ) {
    const parsed = TokensFile.parse(entries);
    this.plaintext = parsed.filter((t) => t.secret !== undefined).map((t) => t.name);
    this.tokens = parsed.map((t) => ({
      hash: Buffer.from(t.secretSha256 ?? tokenHash(t.secret!), 'hex'),
      principal: {
        who: `token:${t.name}`,
        scopes: new Set(t.scopes),
        namespaces: new Set(t.namespaces ?? (t.scopes.includes('admin') ? ['*'] : [])),
        netns: patternsCompile(t.netns),
        taps: patternsCompile(t.taps),
      },
    }));
  }

  get size(): number {
    return this.tokens.length;
  }

  /**
   * Takes the tokens of `next` (a reload of the tokens file): requests authenticate against the new
   * set from now on, the listener and its rate-limit state stay as they are.
   */
  replaceWith(next: TokenSet): void {
    this.tokens = next.tokens;
    this.plaintext = next.plaintext;
  }

  /**
   * The principal of an Authorization header: `missing` without a bearer token, `invalid` for one
   * that matches no token. Every stored hash is compared (timingSafeEqual, no early exit), so the
   * answer time says nothing about which token or how much of it matched.
   */
  authenticate(header: string | undefined): Principal | 'missing' | 'invalid' {
    if (header === undefined || header === '') return 'missing';
    const m = /^Bearer +([\x21-\x7e]{1,4096}) *$/i.exec(header);
    if (!m) return 'invalid';
    const digest = createHash('sha256').update(m[1]!, 'utf8').digest();
    let found: Principal | undefined;
    for (const t of this.tokens) {
      const equal = this.compare(digest, t.hash);
      if (equal && !found) found = t.principal;
    }
    return found ?? 'invalid';
  }
}

/** Loads the tokens file (YAML or JSON list); errors name the config key and the entry. */
export function tokensLoad(path: string, key = 'api.tcp.tokensFile'): TokenSet {
  let text: string;
  try {
    text = yamlFileRead(path);
  } catch (err) {
    throw new ConfigError(`${key}: cannot read ${path}: ${(err as Error).message}`);
  }
  const nesting = yamlNestingProblem(text);
  if (nesting) throw new ConfigError(`${key}: ${path}: ${nesting}`);
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    // The YAML parser quotes the offending line, which may hold a secret: keep only its first line.
    throw new ConfigError(`${key}: ${path} is not valid YAML: ${String((err as Error).message).split('\n')[0]}`);
  }
  const result = TokensFile.safeParse(doc);
  if (!result.success) throw new ConfigError(`${key}: ${path}: ${zodIssuesFormat(result.error, 'tokens')}`);
  return new TokenSet(result.data);
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
    if (!who.taps.some((p) => p.re.test(device))) return `token "${name}" may not adopt device "${device}": it matches none of ${who.taps.map((p) => p.glob).join(', ')}`;
    return undefined;
  }
  if (body.netns === undefined || !who.netns) return undefined;
  const path = body.netns;
  if (!who.netns.some((p) => p.re.test(path))) return `token "${name}" may not use netns ${path}: it matches none of ${who.netns.map((p) => p.glob).join(', ')}`;
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
