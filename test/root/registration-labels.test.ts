import assert from 'node:assert/strict';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { after, before, describe, test } from 'node:test';
import type { ApiError } from '../../common/api-client.js';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { run, status } from '../helpers/sys.js';

/** Echo replies out of `count` pings from inside a namespace. */
async function pingsAnswered(netns: string, address: string, count = 3): Promise<number> {
  const out = await run('ip', ['netns', 'exec', netns, 'ping', '-c', String(count), '-i', '0.2', '-W', '1', address]).catch((e: Error) => e.message);
  return Number(/(\d+) received/.exec(out)?.[1] ?? 0);
}

/**
 * Issue #12 item 5, the attack as an outside review made it: a workload in namespace `dev` labelled
 * `io.cilium.k8s.namespace.labels.team: prod` satisfies a NetworkPolicy's namespaceSelector meant for
 * namespaces labelled team=prod (before the fix: 3/3 pings where the honest workload gets 0/3).
 * kitnet derives those labels itself; a workload may not carry them, on register nor relabel.
 */
describe('forged identity labels (root)', { timeout: 180_000 }, () => {
  const fx = new AgentFixture({ tag: 'lbl', ipv4Pool: '10.231.0.0/16', ipv6Pool: 'fd00:231::/64', namespaces: ['lbl-db', 'lbl-prod', 'lbl-dev'] });
  const api = fx.api;
  const ns: Record<string, string> = {};
  let db: Workload;
  let honest: Workload;

  after(() => fx.cleanup());
  before(async () => {
    for (const n of ['db', 'prod', 'honest', 'forger']) ns[n] = await fx.netns(n);
    await fx.start();
    await api.call('PUT', '/v1/namespaces/lbl-prod', { labels: { team: 'prod' } });
    // no team label on dev: the namespace's own labels would override a forged key of the same name
    await api.call('PUT', '/v1/namespaces/lbl-dev', { labels: { env: 'dev' } });
    db = await api.call<Workload>('POST', '/v1/workloads', { name: 'db', namespace: 'lbl-db', labels: { app: 'db' }, netns: `/var/run/netns/${ns.db}` });
    await api.call('POST', '/v1/workloads', { name: 'client', namespace: 'lbl-prod', labels: { app: 'client' }, netns: `/var/run/netns/${ns.prod}` });
    honest = await api.call<Workload>('POST', '/v1/workloads', { name: 'honest', namespace: 'lbl-dev', labels: { app: 'client' }, netns: `/var/run/netns/${ns.honest}` });
    await api.call('PUT', '/v1/policies', {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: { name: 'db-from-prod', namespace: 'lbl-db' },
      spec: { podSelector: { matchLabels: { app: 'db' } }, policyTypes: ['Ingress'], ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'prod' } } }] }] },
    });
  });

  test('the policy holds for honest workloads: prod reaches db, dev does not', async () => {
    assert.equal(await pingsAnswered(ns.prod!, db.ipv4), 3, 'prod -> db');
    assert.equal(await pingsAnswered(ns.honest!, db.ipv4), 0, 'dev -> db');
  });

  test('registering with io.cilium.k8s.namespace.labels.team=prod is refused with 400 naming the label', async () => {
    const body = { name: 'forger', namespace: 'lbl-dev', labels: { app: 'client', 'io.cilium.k8s.namespace.labels.team': 'prod' }, netns: `/var/run/netns/${ns.forger}` };
    const outcome = await api.call<Workload>('POST', '/v1/workloads', body).then((w) => w, (e: ApiError) => e);
    if (!(outcome instanceof Error)) {
      assert.fail(`the forged label was accepted (identity ${outcome.identity}): the dev workload reaches db ${await pingsAnswered(ns.forger!, db.ipv4)}/3`);
    }
    assert.equal(outcome.statusCode, 400, outcome.message);
    assert.equal(outcome.code, 'AGENT_ERR_API_VALIDATION');
    assert.match(outcome.message, /io\.cilium\.k8s\.namespace\.labels\.team/);
    assert.equal((await run('ip', ['-n', ns.forger!, '-o', 'link', 'show'])).trim().split('\n').length, 1, 'only lo in the namespace');
  });

  test('the same with the k8s: source, the pod namespace label and a reserved: label', async () => {
    for (const labels of [{ 'k8s:io.cilium.k8s.namespace.labels.team': 'prod' }, { 'io.kubernetes.pod.namespace': 'lbl-prod' }, { 'reserved:host': '' }]) {
      await assert.rejects(
        api.call('POST', '/v1/workloads', { name: 'forger', namespace: 'lbl-dev', labels, netns: `/var/run/netns/${ns.forger}` }),
        (e: ApiError) => e.statusCode === 400 && e.message.includes(Object.keys(labels)[0]!),
      );
    }
    assert.equal((await api.call<Workload[]>('GET', '/v1/workloads?namespace=lbl-dev')).length, 1);
  });

  test('relabelling to the forged label is refused too, and the identity stays', async () => {
    await assert.rejects(
      api.call('PATCH', '/v1/workloads/lbl-dev/honest', { labels: { app: 'client', 'io.cilium.k8s.namespace.labels.team': 'prod' } }),
      (e: ApiError) => e.statusCode === 400 && /io\.cilium\.k8s\.namespace\.labels\.team/.test(e.message),
    );
    const now = await api.call<Workload>('GET', '/v1/workloads/lbl-dev/honest');
    assert.equal(now.identity, honest.identity);
    assert.equal(await status('ip', ['netns', 'exec', ns.honest!, 'ping', '-c', '1', '-W', '1', db.ipv4]), 1, 'dev still cannot reach db');
  });

  test('a row stored with a forged label before the check loses the forged identity at the next start', async () => {
    const w = await api.call<Workload>('POST', '/v1/workloads', { name: 'old-forger', namespace: 'lbl-dev', labels: { app: 'client' }, netns: `/var/run/netns/${ns.forger}` });
    assert.equal(w.identity, honest.identity);
    await fx.stop();
    // What an agent before the check stored for labels {app: client, io.cilium.k8s.namespace.labels.team: prod}
    const forgedLabels = [
      'k8s:app=client', 'k8s:io.cilium.k8s.namespace.labels.env=dev', 'k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=lbl-dev',
      'k8s:io.cilium.k8s.namespace.labels.team=prod', 'k8s:io.kubernetes.pod.namespace=lbl-dev',
    ].sort();
    const store = new Database(join(fx.dir, 'state', 'kitnet.db'));
    try {
      store.prepare('INSERT INTO identities (id, labels_key, labels, created_at) VALUES (?, ?, ?, ?)').run(60_000, forgedLabels.join(';'), JSON.stringify(forgedLabels), new Date().toISOString());
      const row = store.prepare("SELECT spec FROM workloads WHERE namespace = 'lbl-dev' AND name = 'old-forger'").get() as { spec: string };
      const spec = JSON.parse(row.spec) as { labels: Record<string, string> };
      spec.labels['io.cilium.k8s.namespace.labels.team'] = 'prod';
      store.prepare("UPDATE workloads SET spec = ?, identity = 60000 WHERE namespace = 'lbl-dev' AND name = 'old-forger'").run(JSON.stringify(spec));
    } finally {
      store.close();
    }
    await fx.start();
    const after = await api.call<Workload>('GET', '/v1/workloads/lbl-dev/old-forger');
    assert.ok(!after.identityLabels.some((l) => l.includes('team=prod')), `identity ${after.identity}: ${after.identityLabels.join(' ')}`);
    assert.equal(after.identity, honest.identity);
    assert.equal(await pingsAnswered(ns.forger!, db.ipv4), 0, 'the old forger no longer reaches db');
  });
});
