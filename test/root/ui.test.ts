import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import type { Workload } from '../../common/schemas/workload.js';
import { apiCall, testAgentStart, type TestAgent } from '../helpers/agent.js';
import { netnsAdd, netnsDel, ping, run, uniq, waitFor } from '../helpers/sys.js';

const CHROMIUM = process.env.KITNET_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = fileURLToPath(new URL('../../../test/artifacts/', import.meta.url));

/** What the page exposes for tests (api/ui/app.js window.kitnetMap), as plain data. */
interface MapView {
  live: boolean;
  records: number;
  nodes: Array<{ id: string; type: string; parent?: string; label: string }>;
  edges: Array<{ id: string; source: string; target: string; label: string; forwarded: number; dropped: number; lineColor: string }>;
}

/**
 * The service map page in headless Chromium (Debian's chromium driven by playwright-core) against a
 * real agent: workloads in two namespaces, traffic between them, to the host and to the world, and a
 * policy that denies — the map must show the workloads grouped by namespace, the edges with their
 * counts, the dropped edge, and the flows of whatever is clicked.
 */
describe('service map page (root, headless Chromium)', { timeout: 240_000 }, () => {
  const id = uniq();
  const nsNames = ['fe', 'be', 'db'].map((n) => `kitnet-ui-${n}-${id}`);
  const children: ChildProcess[] = [];
  const profile = mkdtempSync(join(tmpdir(), 'kitnet-ui-chromium-'));
  let t: TestAgent;
  let fe: Workload;
  let be: Workload;
  let db: Workload;
  let ctx: BrowserContext;
  let page: Page;

  const register = (name: string, namespace: string, labels: Record<string, string>, i: number) =>
    apiCall<Workload>(t.url, 'POST', '/v1/workloads', { name, namespace, labels, netns: `/var/run/netns/${nsNames[i]}` });
  const inNs = (i: number, args: string[]) => run('ip', ['netns', 'exec', nsNames[i]!, ...args], { timeoutMs: 20_000 });
  /** One TCP connection from namespace i; resolves whether it was answered or not. */
  const tcpTry = (i: number, host: string, port: number) =>
    inNs(i, [process.execPath, '-e', `const s=require('net').connect(${port},'${host}');s.on('data',()=>{});s.on('close',()=>process.exit(0));s.on('error',()=>process.exit(0));setTimeout(()=>process.exit(0),1500)`]);
  const view = (): Promise<MapView> =>
    page.evaluate(() => {
      // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the page's own test hook
      const m = (globalThis as any).kitnetMap;
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      const cy = m.cy as any;
      return {
        live: m.live,
        records: m.records,
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        nodes: cy.nodes().map((n: any) => ({ id: n.id(), type: n.data('type'), parent: n.data('parent'), label: n.data('label') })),
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        edges: cy.edges().map((e: any) => ({
          id: e.id(),
          source: e.data('source'),
          target: e.data('target'),
          label: e.data('label'),
          forwarded: e.data('forwarded'),
          dropped: e.data('dropped'),
          lineColor: e.style('line-color'),
        })),
      };
    });
  /**
   * Clicks an element where cytoscape draws it (a real mouse click through the canvas), until the page has
   * it selected: an animated layout may still move it between reading its position and the click, which
   * a loaded machine makes likely, so a click that missed is made again at the new position. An edge is
   * clicked at its midpoint first, then at other points of its curve (a node or another edge of the
   * layout may lie on the midpoint); an element outside the visible canvas is brought into view first.
   */
  const clickElement = async (elementId: string) => {
    const deadline = Date.now() + 15_000;
    const along = [0.5, 0.3, 0.7, 0.4, 0.6, 0.2, 0.8];
    const tried: string[] = [];
    for (let attempt = 0; ; attempt++) {
      const pos = await page.evaluate(
        ([eid, t]) => {
          // eslint-disable-next-line @typescript-eslint/no-explicit-any
          const cy = (globalThis as any).kitnetMap.cy as any;
          const el = cy.getElementById(eid);
          const box = cy.container().getBoundingClientRect();
          const inView = (p: { x: number; y: number }) => p.x > 5 && p.y > 5 && p.x < box.width - 5 && p.y < box.height - 5;
          if (el.isNode() ? !inView(el.renderedPosition()) : !inView(el.renderedMidpoint())) cy.fit(undefined, 40);
          let p: { x: number; y: number };
          if (el.isNode()) p = el.renderedPosition();
          else {
            // a bezier edge is a quadratic curve through its midpoint: control = 2 * mid - (source + target) / 2
            const s = el.renderedSourceEndpoint();
            const e = el.renderedTargetEndpoint();
            const m = el.renderedMidpoint();
            const c = { x: 2 * m.x - (s.x + e.x) / 2, y: 2 * m.y - (s.y + e.y) / 2 };
            const u = 1 - (t as number);
            p = { x: u * u * s.x + 2 * u * (t as number) * c.x + (t as number) * (t as number) * e.x, y: u * u * s.y + 2 * u * (t as number) * c.y + (t as number) * (t as number) * e.y };
          }
          return { x: box.left + p.x, y: box.top + p.y };
        },
        [elementId, along[attempt % along.length]!] as const,
      );
      tried.push(`(${Math.round(pos.x)},${Math.round(pos.y)})`);
      await page.mouse.click(pos.x, pos.y);
      const selected = await page
        .waitForFunction((eid) => (globalThis as unknown as { kitnetMap: { selected(): string | undefined } }).kitnetMap.selected() === eid, elementId, { timeout: 1000 })
        .then(() => true)
        .catch(() => false);
      if (selected) return;
      if (Date.now() > deadline) {
        mkdirSync(ARTIFACTS, { recursive: true });
        const shot = join(ARTIFACTS, `ui-click-missed-${Date.now()}.png`);
        await page.screenshot({ path: shot }).catch(() => undefined);
        const now = await page.evaluate(() => (globalThis as unknown as { kitnetMap: { selected(): string | undefined } }).kitnetMap.selected());
        assert.fail(`clicking ${elementId} did not select it within 15 s (clicked at ${tried.slice(-8).join(' ')}; selected: ${now ?? 'nothing'}; screenshot ${shot})`);
      }
    }
  };
  const flowRows = () =>
    page.$$eval('[data-testid="flows"] tbody tr', (rows) => rows.map((r) => ({ verdict: r.getAttribute('data-verdict') ?? '', text: r.textContent ?? '' })));

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: the page test needs Debian's chromium package (apt-get install chromium)`);
    for (const n of nsNames) await netnsAdd(n);
    t = await testAgentStart(id, { nodeName: 'ui-node', ipam: { ipv4Pool: '10.232.0.0/24', ipv6Pool: 'fd00:232::/64' } });
    fe = await register('frontend', 'webshop', { app: 'frontend' }, 0);
    be = await register('backend', 'webshop', { app: 'backend' }, 1);
    db = await register('database', 'storage', { app: 'db' }, 2);
    // Servers: backend on 8080, database on 5432.
    for (const [i, port] of [[1, 8080], [2, 5432]] as const) {
      children.push(
        spawn('ip', ['netns', 'exec', nsNames[i]!, process.execPath, '-e', `require('net').createServer((s)=>{s.on('error',()=>{});s.end('ok')}).listen(${port},'::')`], { stdio: 'ignore' }),
      );
    }
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1440, height: 860 },
    });
    page = ctx.pages()[0] ?? (await ctx.newPage());
  });

  after(async () => {
    await ctx?.close().catch(() => undefined);
    rmSync(profile, { recursive: true, force: true });
    for (const c of children) c.kill('SIGKILL');
    await t?.stop();
    for (const n of nsNames) await netnsDel(n);
  });

  test('the page and the graph library are served by the agent', async () => {
    for (const [path, type] of [['/ui/', /text\/html/], ['/ui/app.js', /javascript/], ['/ui/graph.js', /javascript/], ['/ui/style.css', /text\/css/], ['/ui/vendor/cytoscape.mjs', /javascript/], ['/ui/vendor/cytoscape-fcose.js', /javascript/], ['/ui/vendor/cose-base.js', /javascript/], ['/ui/vendor/layout-base.js', /javascript/]] as const) {
      const res = await fetch(`${t.url}${path}`);
      assert.equal(res.status, 200, path);
      assert.match(res.headers.get('content-type') ?? '', type, path);
    }
    const redirect = await fetch(`${t.url}/ui`, { redirect: 'manual' });
    assert.equal(redirect.status, 302);
    assert.equal((await fetch(`${t.url}/ui/../package.json`)).status, 404);
    assert.equal((await fetch(`${t.url}/ui/nope.js`)).status, 404);
  });

  test('the page loads, goes live and shows the registered workloads grouped by namespace', async () => {
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${t.url}/ui`);
    await page.waitForFunction(() => (globalThis as unknown as { kitnetMap?: { live: boolean } }).kitnetMap?.live === true, undefined, { timeout: 10_000 });
    await page.waitForFunction(() => (globalThis as unknown as { kitnetMap: { cy: { nodes(s: string): { length: number } } } }).kitnetMap.cy.nodes('[type = "workload"]').length === 3, undefined, { timeout: 10_000 });
    const v = await view();
    const node = (nid: string) => v.nodes.find((n) => n.id === nid);
    assert.equal(node('wl:webshop/frontend')?.parent, 'ns:webshop');
    assert.equal(node('wl:webshop/backend')?.parent, 'ns:webshop');
    assert.equal(node('wl:storage/database')?.parent, 'ns:storage');
    assert.equal(node('ns:webshop')?.type, 'namespace');
    assert.equal(node('ns:storage')?.type, 'namespace');
    assert.deepEqual(errors, []);
    assert.equal(await page.evaluate(() => typeof (globalThis as unknown as { cytoscapeFcose?: unknown }).cytoscapeFcose), 'function', 'fcose layout loaded');
    assert.match((await page.textContent('#node-name')) ?? '', /ui-node/);
  });

  test('traffic appears live: edges with protocol/port and counts, host and world nodes', async () => {
    const hostIp = Object.values(networkInterfaces())
      .flat()
      .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
    assert.ok(hostIp, 'the host has an IPv4 address');
    assert.ok(await ping(nsNames[0]!, be.ipv4, 2), 'frontend -> backend ping');
    for (let i = 0; i < 3; i++) await tcpTry(0, be.ipv4, 8080);
    await tcpTry(1, db.ipv4, 5432);
    await ping(nsNames[0]!, hostIp, 1);
    await ping(nsNames[0]!, '192.0.2.1', 1); // TEST-NET-1: leaves towards the world, never answered
    await page.waitForFunction(
      () => {
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        const cy = (globalThis as any).kitnetMap.cy as any;
        return ['wl:webshop/frontend->wl:webshop/backend|TCP/8080', 'wl:webshop/backend->wl:storage/database|TCP/5432', 'wl:webshop/frontend->host|ICMPv4/', 'wl:webshop/frontend->world|ICMPv4/'].every(
          (eid) => cy.getElementById(eid).nonempty(),
        );
      },
      undefined,
      { timeout: 10_000 },
    );
    const v = await view();
    const edge = (eid: string) => v.edges.find((e) => e.id === eid)!;
    const web = edge('wl:webshop/frontend->wl:webshop/backend|TCP/8080');
    // Three connections; each packet counted once although both ends observe it.
    assert.ok(web.forwarded >= 3, `forwarded ${web.forwarded}`);
    assert.equal(web.dropped, 0);
    assert.match(web.label, /^TCP\/8080 {2}✓\d+$/);
    assert.match(edge('wl:webshop/frontend->wl:webshop/backend|ICMPv4/').label, /^ICMPv4 {2}✓[2-4]$/, 'the echo request and reply, at most both pings');
    assert.equal(v.nodes.find((n) => n.id === 'world')?.type, 'world');
    assert.equal(v.nodes.find((n) => n.id === 'host')?.type, 'host');
  });

  test('a policy that denies makes a dropped edge, and clicking it lists the dropped flows', async () => {
    // Default-deny ingress for the database: backend -> database:5432 is dropped from now on.
    await apiCall(t.url, 'PUT', '/v1/policies', {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: { name: 'db-deny-all', namespace: 'storage' },
      spec: { podSelector: { matchLabels: { app: 'db' } }, policyTypes: ['Ingress'] },
    });
    for (let i = 0; i < 2; i++) await tcpTry(1, db.ipv4, 5432);
    const dbEdge = 'wl:webshop/backend->wl:storage/database|TCP/5432';
    await waitFor('the dropped edge', async () => ((await view()).edges.find((e) => e.id === dbEdge)?.dropped ?? 0) > 0, 10_000);
    const e = (await view()).edges.find((x) => x.id === dbEdge)!;
    assert.match(e.label, /✗\d+$/, e.label);
    assert.ok(['rgb(220,38,38)', 'rgb(249,115,22)'].includes(e.lineColor.replace(/\s/g, '')), `drawn red/orange: ${e.lineColor}`);
    assert.ok(Number((await page.textContent('#stat-dropped')) ?? 0) > 0);

    await clickElement(dbEdge);
    await page.waitForSelector('[data-testid="flows"] tbody tr[data-verdict="DROPPED"]', { timeout: 5000 });
    const rows = await flowRows();
    assert.ok(rows.every((r) => /storage\/database|webshop\/backend/.test(r.text)), 'only this edge');
    const dropped = rows.filter((r) => r.verdict === 'DROPPED');
    assert.ok(dropped.length >= 2, `dropped rows: ${dropped.length}`);
    assert.ok(dropped.every((r) => /POLICY_DENIED/.test(r.text)), dropped.map((r) => r.text).join('\n'));
    assert.match((await page.textContent('#sel-title')) ?? '', /webshop\/backend → storage\/database/);
    assert.match((await page.textContent('#sel-filter')) ?? '', /destination_port/);
    // A new drop while the edge is selected is added to the list live.
    const before = dropped.length;
    await tcpTry(1, db.ipv4, 5432);
    await waitFor('a live row', async () => (await flowRows()).filter((r) => r.verdict === 'DROPPED').length > before, 5000);
  });

  test('clicking a workload lists its flows; the screenshot is kept', async () => {
    await clickElement('wl:webshop/frontend');
    await page.waitForFunction(() => (globalThis as unknown as { kitnetMap: { panelLoads: number } }).kitnetMap.panelLoads >= 2, undefined, { timeout: 5000 });
    await page.waitForSelector('[data-testid="flows"] tbody tr[data-verdict="FORWARDED"]', { timeout: 5000 });
    assert.equal(await page.textContent('#sel-title'), `${fe.namespace}/${fe.name}`);
    const rows = await flowRows();
    assert.ok(rows.length > 0);
    assert.ok(rows.every((r) => /webshop\/frontend/.test(r.text)), 'only flows of the frontend');
    assert.match((await page.textContent('#sel-filter')) ?? '', /source_workload/);
    // Show the dropped edge selected in the kept screenshot.
    await clickElement('wl:webshop/backend->wl:storage/database|TCP/5432');
    await page.waitForSelector('[data-testid="flows"] tbody tr[data-verdict="DROPPED"]', { timeout: 5000 });
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'ui-service-map.png') });
    assert.ok(existsSync(join(ARTIFACTS, 'ui-service-map.png')));
  });
});
