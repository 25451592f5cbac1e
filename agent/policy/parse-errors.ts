/**
 * How an invalid policy batch is reported: every problem as a PolicyIssue naming the document (1-based
 * position in the batch, kind, namespace/name) and the field path, and the two errors a batch is
 * refused with (invalid, or beyond POLICY_LIMITS).
 */
import type { z } from 'zod';
import { KitnetError } from '../../common/errors.js';
import { POLICY_LIMITS } from './limits.js';

export interface PolicyIssue {
  /** 1-based position of the document in the batch (after expanding arrays and Lists). */
  document: number;
  /** `CiliumNetworkPolicy prod/allow-web`, or `?` parts when the document does not say. */
  ref: string;
  /** Field path such as `spec.ingress[0].toPorts[0].ports[0].port`; empty for the document itself. */
  path: string;
  message: string;
}

/**
 * Thrown for an invalid batch, with code AGENT_ERR_POLICY_INVALID (400).
 * `issues` lists every problem found.
 */
export class PolicyValidationError extends KitnetError {
  override name = 'PolicyValidationError';
  readonly issues: PolicyIssue[];
  constructor(issues: PolicyIssue[]) {
    const lines = issues.slice(0, POLICY_LIMITS.issues).map(issueFormat);
    const shown = lines.join('\n') + (issues.length >= POLICY_LIMITS.issues ? `\n(validation stopped after ${POLICY_LIMITS.issues} problems; more may follow)` : '');
    super('AGENT_ERR_POLICY_INVALID', shown, { field: issues[0]?.path });
    this.issues = issues;
  }
}

/** A request beyond POLICY_LIMITS (AGENT_ERR_POLICY_TOO_LARGE, 413), refused before its documents are built. */
export class PolicyTooLargeError extends KitnetError {
  override name = 'PolicyTooLargeError';
  constructor(what: string, limit: string) {
    super('AGENT_ERR_POLICY_TOO_LARGE', `the request holds ${what}; the limit is ${limit} per request (split it into several requests); nothing was applied`);
  }
}

export function issueFormat(i: PolicyIssue): string {
  return `document ${i.document} (${i.ref})${i.path ? `: ${i.path}` : ''}: ${i.message}`;
}

export function pathFormat(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out;
}

export function zodIssues(document: number, ref: string, error: z.ZodError): PolicyIssue[] {
  return error.issues.slice(0, POLICY_LIMITS.issues).flatMap((i) =>
    i.code === 'unrecognized_keys'
      ? i.keys.map((k) => ({ document, ref, path: pathFormat([...i.path, k]), message: 'unknown field' }))
      : [{ document, ref, path: pathFormat(i.path), message: i.message }],
  );
}
