import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyPluginAsync, FastifyReply } from 'fastify';

/**
 * The service map page: static files from api/ui/ (plain ES modules, no build step) and the graph
 * library from node_modules, all served by the agent itself (no CDN: hosts may have no internet).
 */

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/** api/ui next to this file (sources) or, from dist/api/routes, the one in the checkout. */
export function uiDirFind(from = dirname(fileURLToPath(import.meta.url))): string {
  const candidates = [join(from, '..', 'ui'), join(from, '..', '..', '..', 'api', 'ui')];
  const dir = candidates.find((d) => existsSync(join(d, 'index.html')));
  if (!dir) throw new Error(`service map page not found (looked in ${candidates.join(', ')})`);
  return dir;
}

/** The browser build of cytoscape (ES module) from node_modules. */
function cytoscapePath(): string {
  const main = fileURLToPath(import.meta.resolve('cytoscape'));
  const min = join(dirname(main), 'cytoscape.esm.min.mjs');
  return existsSync(min) ? min : main;
}

/** The fcose layout and its two helpers: UMD builds, loaded by classic script tags (globals). */
const LAYOUT_SCRIPTS: Record<string, string> = {
  'vendor/layout-base.js': 'layout-base/layout-base.js',
  'vendor/cose-base.js': 'cose-base/cose-base.js',
  'vendor/cytoscape-fcose.js': 'cytoscape-fcose/cytoscape-fcose.js',
};

interface Asset {
  body: Buffer;
  type: string;
}

function assetLoad(path: string): Asset {
  const ext = path.slice(path.lastIndexOf('.'));
  return { body: readFileSync(path), type: TYPES[ext] ?? 'application/octet-stream' };
}

const PAGE_FILES = ['index.html', 'app.js', 'flow-row.js', 'graph.js', 'style.css', 'favicon.svg'];

/** Loaded once: a handful of small files plus the libraries (~0.6 MB), never a path from the request. */
function assetsLoad(): Map<string, Asset> {
  const dir = uiDirFind();
  const assets = new Map<string, Asset>();
  for (const f of PAGE_FILES) if (existsSync(join(dir, f))) assets.set(f, assetLoad(join(dir, f)));
  assets.set('vendor/cytoscape.mjs', assetLoad(cytoscapePath()));
  const require = createRequire(import.meta.url);
  for (const [name, module] of Object.entries(LAYOUT_SCRIPTS)) assets.set(name, assetLoad(require.resolve(module)));
  return assets;
}

export const uiRoutes: FastifyPluginAsync = async (app) => {
  let assets: Map<string, Asset>;
  try {
    assets = assetsLoad();
  } catch (err) {
    // A missing page must not keep the agent from starting: /ui says what is wrong instead.
    const message = `service map page unavailable: ${(err as Error).message}`;
    app.log.warn(message);
    app.get('/ui', { schema: { hide: true } }, async (_req, reply) =>
      reply.code(404).send({ statusCode: 404, code: 'AGENT_ERR_API_NOT_FOUND', error: 'Not Found', message }),
    );
    return;
  }

  const send = (name: string) => async (_req: unknown, reply: FastifyReply) => {
    const a = assets.get(name);
    if (!a) return reply.code(404).send({ statusCode: 404, code: 'AGENT_ERR_API_NOT_FOUND', error: 'Not Found', message: `no file ${name}` });
    return reply.type(a.type).header('cache-control', 'no-cache').header('x-content-type-options', 'nosniff').send(a.body);
  };

  app.get('/ui', { schema: { hide: true } }, async (_req, reply) => reply.redirect('/ui/'));
  app.get('/ui/', { schema: { hide: true } }, send('index.html'));
  for (const name of assets.keys()) {
    if (name !== 'index.html') app.get(`/ui/${name}`, { schema: { hide: true } }, send(name));
  }
};
