import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ConfigError, zodIssuesFormat } from './config-error.js';
import { yamlFileRead, yamlNestingProblem } from './yaml-guard.js';
import { globPartsMatcher } from './glob.js';

/**
 * The TCP listener's tokens: the tokens file's schema, loading it, and authenticating bearer tokens
 * against it (hashes only, constant-time). Below the API and the agent: the daemon loads the file at
 * start and on reload, `kitnet config check` validates it, the API authenticates with it.
 */

export const SCOPES = ['read', 'register', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

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
export function globMatcher(glob: string): (path: string) => boolean {
  // Not a regular expression: a pattern with many stars would backtrack for minutes on a long path an
  // API client sends (common/glob.ts).
  return globPartsMatcher(glob, '/', true);
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
  netns?: ReadonlyArray<{ glob: string; matches: (path: string) => boolean }> | undefined;
  /** Patterns a tap device must match (kind tap); undefined = no tap may be adopted. */
  taps?: ReadonlyArray<{ glob: string; matches: (path: string) => boolean }> | undefined;
}

const patternsCompile = (globs: string[] | undefined) => globs?.map((glob) => ({ glob, matches: globMatcher(glob) }));

/** The unix socket's caller: its file mode and group are the authentication. */
export const UNIX_PRINCIPAL: Principal = { who: 'unix-socket', scopes: new Set(SCOPES), namespaces: new Set(['*']) };

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
