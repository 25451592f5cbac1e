import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { ErrorCatalogue, KitnetError, type ErrorCode } from '../common/errors.js';

function reasonPhrase(status: number): string {
  return (
    {
      400: 'Bad Request',
      401: 'Unauthorized',
      403: 'Forbidden',
      404: 'Not Found',
      405: 'Method Not Allowed',
      409: 'Conflict',
      413: 'Payload Too Large',
      415: 'Unsupported Media Type',
      422: 'Unprocessable Entity',
      429: 'Too Many Requests',
      500: 'Internal Server Error',
    }[
      status
    ] ?? 'Error'
  );
}

/** Fastify's own client errors (body parser, content type) by status; others count as validation. */
const FASTIFY_STATUS_CODES: Partial<Record<number, ErrorCode>> = {
  413: 'AGENT_ERR_API_BODY_TOO_LARGE',
  415: 'AGENT_ERR_API_UNSUPPORTED_MEDIA_TYPE',
};

/** One error shape for every failure: {statusCode, code, error, message, field?}. */
export function errorHandler(err: FastifyError | KitnetError | Error, req: FastifyRequest, reply: FastifyReply): void {
  if (err instanceof KitnetError) {
    if (err.statusCode >= 500) req.log.error({ err }, err.message);
    void reply.code(err.statusCode).send({
      statusCode: err.statusCode,
      code: err.code,
      error: reasonPhrase(err.statusCode),
      message: err.message,
      ...(err.field ? { field: err.field } : {}),
    });
    return;
  }
  if (hasZodFastifySchemaValidationErrors(err)) {
    const where = (err as FastifyError).validationContext ?? 'body';
    const first = err.validation[0];
    const path = first?.instancePath?.replace(/^\//, '').replace(/\//g, '.') ?? '';
    const message = err.validation
      .map((v) => `${where}${v.instancePath ? v.instancePath.replace(/\//g, '.') : ''}: ${v.message}`)
      .join('; ');
    void reply.code(400).send({
      statusCode: 400,
      code: 'AGENT_ERR_API_VALIDATION',
      error: 'Bad Request',
      message,
      ...(path ? { field: path } : {}),
    });
    return;
  }
  const fe = err as FastifyError;
  const status = fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500 ? fe.statusCode : 500;
  if (status >= 500) req.log.error({ err }, 'unhandled error');
  void reply.code(status).send({
    statusCode: status,
    code: status >= 500 ? 'AGENT_ERR_INTERNAL' : (FASTIFY_STATUS_CODES[status] ?? 'AGENT_ERR_API_VALIDATION'),
    error: reasonPhrase(status),
    message: status >= 500 ? ErrorCatalogue.AGENT_ERR_INTERNAL.summary : fe.message,
  });
}
