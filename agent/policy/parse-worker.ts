/**
 * The policy parser's worker thread (parse-offthread.ts starts it): parses and validates one request
 * at a time, so a large body costs this thread's time and heap, never the agent's event loop.
 */
import { parentPort } from 'node:worker_threads';
import { KitnetError } from '../../common/errors.js';
import { PolicyValidationError } from './parse-errors.js';
import { policiesFromObjects, policiesParse } from './parse.js';
import type { ParseJob, ParseReply } from './parse-offthread.js';

parentPort!.on('message', (job: ParseJob) => {
  let reply: ParseReply;
  try {
    const policies = job.text !== undefined ? policiesParse(job.text, job.contentType) : policiesFromObjects(job.objects ?? []);
    reply = { id: job.id, policies };
  } catch (err) {
    if (err instanceof PolicyValidationError) reply = { id: job.id, issues: err.issues };
    else if (err instanceof KitnetError) reply = { id: job.id, error: { code: err.code, message: err.message } };
    else reply = { id: job.id, error: { code: 'AGENT_ERR_INTERNAL', message: (err as Error).message } };
  }
  try {
    parentPort!.postMessage(reply);
  } catch (err) {
    parentPort!.postMessage({ id: job.id, error: { code: 'AGENT_ERR_INTERNAL', message: `the parse result could not be sent: ${(err as Error).message}` } });
  }
});
