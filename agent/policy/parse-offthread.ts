/**
 * Parses and validates a policy request in a worker thread (parse-worker.ts), so that no body within
 * the 4 MiB limit holds the agent's event loop: parsing YAML and validating thousands of documents
 * takes seconds, and /healthz (and the systemd watchdog) must still be answered meanwhile. The worker
 * has its own heap limit (POLICY_LIMITS.parserHeapMb) and a deadline; past either the request fails
 * with 413 and a fresh worker serves the next one. Requests are parsed one at a time.
 */
import { Worker } from 'node:worker_threads';
import { KitnetError, type ErrorCode } from '../../common/errors.js';
import { POLICY_LIMITS } from './limits.js';
import { policyObjectsBound } from './parse-documents.js';
import { PolicyTooLargeError, PolicyValidationError, type PolicyIssue } from './parse-errors.js';
import type { ParsedPolicy } from './types.js';

export interface ParseJob {
  id: number;
  /** YAML or JSON text, or */
  text?: string | undefined;
  contentType?: string | undefined;
  /** documents that are already values (a JSON body). */
  objects?: unknown[] | undefined;
}

export type ParseReply =
  | { id: number; policies: ParsedPolicy[] }
  | { id: number; issues: PolicyIssue[] }
  | { id: number; error: { code: ErrorCode; message: string } };

const WORKER_URL = new URL('./parse-worker.js', import.meta.url);

class ParserThread {
  private worker: Worker | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private nextId = 1;

  run(job: Omit<ParseJob, 'id'>): Promise<ParsedPolicy[]> {
    const result = this.queue.then(() => this.once({ ...job, id: this.nextId++ }));
    this.queue = result.catch(() => undefined);
    return result;
  }

  private spawn(): Worker {
    const w = new Worker(WORKER_URL, { resourceLimits: { maxOldGenerationSizeMb: POLICY_LIMITS.parserHeapMb } });
    // An idle parser never keeps the agent (or a test) running.
    w.unref();
    return w;
  }

  private once(job: ParseJob): Promise<ParsedPolicy[]> {
    const w = (this.worker ??= this.spawn());
    return new Promise<ParsedPolicy[]>((resolve, reject) => {
      const done = (fn: () => void) => {
        clearTimeout(timer);
        w.off('message', onMessage);
        w.off('error', onError);
        w.off('exit', onExit);
        fn();
      };
      const discard = () => {
        if (this.worker === w) this.worker = undefined;
        void w.terminate();
      };
      const onMessage = (reply: ParseReply) => {
        if (reply.id !== job.id) return;
        done(() => {
          if ('policies' in reply) resolve(reply.policies);
          else if ('issues' in reply) reject(new PolicyValidationError(reply.issues));
          else reject(new KitnetError(reply.error.code, reply.error.message));
        });
      };
      const onError = (err: Error & { code?: string }) => {
        discard();
        done(() =>
          reject(
            err.code === 'ERR_WORKER_OUT_OF_MEMORY'
              ? new PolicyTooLargeError(`documents that need more than ${POLICY_LIMITS.parserHeapMb} MiB to parse`, `${POLICY_LIMITS.parserHeapMb} MiB of parser heap`)
              : err,
          ),
        );
      };
      const onExit = (code: number) => {
        discard();
        done(() => reject(new Error(`the policy parser thread exited (code ${code})`)));
      };
      const timer = setTimeout(() => {
        discard();
        done(() => reject(new PolicyTooLargeError(`documents that take more than ${POLICY_LIMITS.parseTimeoutMs / 1000} s to parse`, `${POLICY_LIMITS.parseTimeoutMs / 1000} s of parsing`)));
      }, POLICY_LIMITS.parseTimeoutMs);
      w.on('message', onMessage);
      w.on('error', onError);
      w.on('exit', onExit);
      w.ref();
      try {
        w.postMessage(job);
      } catch (err) {
        // A value the structured clone refuses (it recurses on nesting): refused like any invalid body.
        done(() => reject(new PolicyValidationError([{ document: 1, ref: 'request', path: '', message: `cannot be read: ${(err as Error).message}` }])));
      }
    }).finally(() => this.worker?.unref());
  }
}

const parser = new ParserThread();

/**
 * Parses and validates a policy request off the event loop: `body` is YAML/JSON text, or a JSON value
 * (one document or an array of them) that is first bounded here, in at most POLICY_LIMITS.nodes steps,
 * before it is copied to the worker. Throws PolicyValidationError (400), PolicyTooLargeError (413).
 */
export function policiesParseOffThread(body: unknown, contentType?: string): Promise<ParsedPolicy[]> {
  if (typeof body === 'string') return parser.run({ text: body, contentType });
  const objects = Array.isArray(body) ? (body as unknown[]) : [body];
  policyObjectsBound(objects);
  return parser.run({ objects });
}
