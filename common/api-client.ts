import { request } from 'node:http';

export const DEFAULT_SOCKET = '/run/kitnet/kitnet.sock';

/**
 * The socket the CLI talks to when not told: KITNET_SOCKET, else KITNET_API_SOCKET (the variable the
 * agent reads its api.socket from, so one exported variable serves both), else the default.
 */
export function socketDefault(env: NodeJS.ProcessEnv = process.env): string {
  return env.KITNET_SOCKET || env.KITNET_API_SOCKET || DEFAULT_SOCKET;
}

export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface ClientOptions {
  socket?: string;
}

/** A small client of the agent's REST API over its unix socket. The CLI never touches the kernel. */
export class ApiClient {
  readonly socket: string;

  constructor(opts: ClientOptions = {}) {
    this.socket = opts.socket ?? socketDefault();
  }

  private raw(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
      const req = request(
        {
          socketPath: this.socket,
          method,
          path,
          headers: payload !== undefined ? { 'content-type': contentType, 'content-length': Buffer.byteLength(payload) } : {},
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
          res.on('error', reject);
        },
      );
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
          reject(new Error(`cannot reach the kitnet agent at ${this.socket} (${err.code}); is it running? (kitnet agent)`));
        } else if (err.code === 'EACCES') {
          reject(new Error(`permission denied on ${this.socket}; run as root or as a member of the kitnet group`));
        } else reject(err);
      });
      if (payload) req.write(payload);
      req.end();
    });
  }

  /** Sends a JSON body (or, with a content type, a text body as is) and parses the JSON answer. */
  async call<T>(method: string, path: string, body?: unknown, contentType?: string): Promise<T> {
    const { status, text } = await this.raw(method, path, body, contentType);
    if (status >= 400) {
      let parsed: { code?: string; message?: string } = {};
      try {
        parsed = JSON.parse(text) as typeof parsed;
      } catch {
        /* not JSON: keep the raw text */
      }
      throw new ApiError(status, parsed.code ?? 'HTTP_ERROR', parsed.message ?? (text || `HTTP ${status}`));
    }
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /** Fetches NDJSON; with follow, calls onLine for each line until the agent closes the stream. */
  stream(path: string, onLine: (line: string) => void, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const req = request({ socketPath: this.socket, method: 'GET', path, ...(signal ? { signal } : {}) }, (res) => {
        if ((res.statusCode ?? 0) >= 400) {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => reject(new ApiError(res.statusCode ?? 0, 'HTTP_ERROR', text)));
          return;
        }
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buf += chunk;
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const l = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (l) onLine(l);
          }
        });
        res.on('end', () => resolve());
        res.on('error', (err) => (signal?.aborted ? resolve() : reject(err)));
      });
      req.on('error', (err) => (signal?.aborted ? resolve() : reject(err)));
      req.end();
    });
  }
}
