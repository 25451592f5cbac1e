import type { z } from 'zod';

/** A config or tokens file the agent refuses; `keys` names the bad keys for the operator. */
export class ConfigError extends Error {
  override name = 'ConfigError';
  /** The bad keys as dotted paths (`flows.aggregation`), when validation named them. */
  readonly keys: string[];

  constructor(message: string, keys: string[] = []) {
    super(message);
    this.keys = keys;
  }
}

/** Formats zod issues as `key.path: message`, one per line, so the operator sees which key is wrong. */
export function zodIssuesFormat(error: z.ZodError, prefix = ''): string {
  return error.issues
    .map((i) => `${[prefix, ...i.path.map(String)].filter(Boolean).join('.') || '(root)'}: ${i.message}`)
    .join('; ');
}
