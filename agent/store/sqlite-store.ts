import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { identityFromRow, namespaceFromRow, policyFromRow, rowToRecord } from './sqlite-rows.js';
import type { IdentityRow, NamespaceRow, PolicyRow, WorkloadRow } from './sqlite-rows.js';
import { schemaMigrate } from './sqlite-schema.js';
import type { Store, StoreChange, StoreTx, TransactionOptions, WorkloadStatus } from './store.js';
import type { IdentityRecord, NamespaceRecord, NewWorkload, PolicyRecord, WorkloadRecord, WorkloadSpec } from './types.js';

/**
 * The embedded single-host store (the `Store` interface, `store.ts`). Writes are synchronous SQLite
 * transactions in WAL mode with synchronous=FULL, so a change the API acknowledged survives a crash or
 * power loss (see `transaction` for the one relaxed kind of write). A transaction runs to its commit
 * before `transaction` returns: the promise only carries the result.
 */
export class SqliteStore implements Store, StoreTx {
  readonly db: Database.Database;
  /** Prepared statements by SQL text: preparing costs more than running most of these queries. */
  private readonly statements = new Map<string, Database.Statement>();
  private readonly listeners = new Set<(change: StoreChange) => void>();
  /** Changes of the open transaction, announced once it commits. */
  private pending: StoreChange[] = [];

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true, mode: 0o750 });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    schemaMigrate(this.db);
  }

  private stmt(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) this.statements.set(sql, (st = this.db.prepare(sql)));
    return st;
  }

  transaction<T>(fn: (tx: StoreTx) => T, opts: TransactionOptions = {}): Promise<T> {
    try {
      return Promise.resolve(this.transactionSync(() => fn(this), opts));
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  /**
   * Runs fn in one transaction (nested calls join the outer one). `durable: false` commits without
   * waiting for the disk (WAL, synchronous=NORMAL): the commit survives a crash of the process but a
   * power loss may take it back. For writes nobody has been told about yet, which a later durable
   * commit makes durable too (it syncs the whole write-ahead log, earlier commits included).
   */
  transactionSync<T>(fn: () => T, opts: TransactionOptions = {}): T {
    if (this.db.inTransaction) return this.db.transaction(fn)();
    let result: T;
    try {
      if (opts.durable !== false) {
        result = this.db.transaction(fn)();
      } else {
        this.db.pragma('synchronous = NORMAL');
        try {
          result = this.db.transaction(fn)();
        } finally {
          this.db.pragma('synchronous = FULL');
        }
      }
    } catch (err) {
      this.pending = [];
      throw err;
    }
    const committed = this.pending;
    this.pending = [];
    for (const change of committed) this.announce(change);
    return result;
  }

  subscribe(listener: (change: StoreChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Listeners run synchronously after the commit and must not throw. */
  private announce(change: StoreChange): void {
    for (const l of this.listeners) l(change);
  }

  /** A write inside a transaction is announced at its commit; outside one, at once. */
  private changed(change: StoreChange): void {
    if (this.db.inTransaction) this.pending.push(change);
    else this.announce(change);
  }

  close(): void {
    this.db.close();
  }

  // --- workloads -----------------------------------------------------------------------------

  workloadGet(namespace: string, name: string): WorkloadRecord | undefined {
    const row = this.stmt('SELECT * FROM workloads WHERE namespace = ? AND name = ?').get(namespace, name) as
      | WorkloadRow
      | undefined;
    return row && rowToRecord(row);
  }

  workloadList(namespace?: string): WorkloadRecord[] {
    const rows = (
      namespace === undefined
        ? this.stmt('SELECT * FROM workloads ORDER BY namespace, name').all()
        : this.stmt('SELECT * FROM workloads WHERE namespace = ? ORDER BY name').all(namespace)
    ) as WorkloadRow[];
    return rows.map(rowToRecord);
  }

  workloadInsert(w: NewWorkload): WorkloadRecord {
    const now = new Date().toISOString();
    this.stmt(
      `INSERT INTO workloads (namespace, name, spec, mode, endpoint_id, identity, ipv4, ipv6, host_ifname, state,
         observed, error, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', NULL, NULL, ?, ?)`,
    ).run(w.spec.namespace, w.spec.name, JSON.stringify(w.spec), w.mode, w.endpointId, w.identity, w.ipv4, w.ipv6, w.hostIfname, now, now);
    this.changed({ kind: 'workload', namespace: w.spec.namespace, name: w.spec.name, what: 'spec' });
    return this.workloadGet(w.spec.namespace, w.spec.name)!;
  }

  workloadStatusSet(namespace: string, name: string, status: WorkloadStatus): void {
    const { changes } = this.stmt('UPDATE workloads SET state = ?, observed = ?, error = ?, updated_at = ? WHERE namespace = ? AND name = ?')
      .run(status.state, status.observed ? JSON.stringify(status.observed) : null, status.error, new Date().toISOString(), namespace, name);
    if (changes > 0) this.changed({ kind: 'workload', namespace, name, what: 'status' });
  }

  workloadDelete(namespace: string, name: string): boolean {
    const gone = this.stmt('DELETE FROM workloads WHERE namespace = ? AND name = ?').run(namespace, name).changes > 0;
    if (gone) this.changed({ kind: 'workload', namespace, name, what: 'deleted' });
    return gone;
  }

  usedAddresses(): { ipv4: Set<string>; ipv6: Set<string> } {
    const rows = this.stmt('SELECT ipv4, ipv6 FROM workloads').all() as Array<{ ipv4: string; ipv6: string }>;
    return { ipv4: new Set(rows.map((r) => r.ipv4)), ipv6: new Set(rows.map((r) => r.ipv6)) };
  }

  usedEndpointIds(): number[] {
    return (this.stmt('SELECT endpoint_id FROM workloads ORDER BY endpoint_id').all() as Array<{ endpoint_id: number }>).map(
      (r) => r.endpoint_id,
    );
  }

  workloadUpdate(namespace: string, name: string, spec: WorkloadSpec, identity: number): void {
    this.stmt('UPDATE workloads SET spec = ?, identity = ?, updated_at = ? WHERE namespace = ? AND name = ?')
      .run(JSON.stringify(spec), identity, new Date().toISOString(), namespace, name);
    this.changed({ kind: 'workload', namespace, name, what: 'spec' });
  }

  // --- namespaces ----------------------------------------------------------------------------

  namespaceGet(name: string): NamespaceRecord | undefined {
    const r = this.stmt('SELECT * FROM namespaces WHERE name = ?').get(name) as NamespaceRow | undefined;
    return r && namespaceFromRow(r);
  }

  namespaceList(): NamespaceRecord[] {
    return (this.stmt('SELECT * FROM namespaces ORDER BY name').all() as NamespaceRow[]).map(namespaceFromRow);
  }

  namespacePut(name: string, labels: Record<string, string>): void {
    const now = new Date().toISOString();
    this.stmt(
      `INSERT INTO namespaces (name, labels, created_at, updated_at) VALUES (?, ?, ?, ?)
       ON CONFLICT(name) DO UPDATE SET labels = excluded.labels, updated_at = excluded.updated_at`,
    ).run(name, JSON.stringify(labels), now, now);
    this.changed({ kind: 'namespace', name });
  }

  // --- policies ------------------------------------------------------------------------------

  policyList(): PolicyRecord[] {
    return (this.stmt('SELECT * FROM policies ORDER BY kind, namespace, name').all() as PolicyRow[]).map(policyFromRow);
  }

  /** Inserts or replaces; returns whether the policy was new. */
  policyPut(kind: string, namespace: string, name: string, document: Record<string, unknown>): boolean {
    const now = new Date().toISOString();
    const existed = this.stmt('SELECT 1 FROM policies WHERE kind = ? AND namespace = ? AND name = ?').get(kind, namespace, name);
    this.stmt(
      `INSERT INTO policies (kind, namespace, name, document, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT(kind, namespace, name) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at`,
    ).run(kind, namespace, name, JSON.stringify(document), now, now);
    this.changed({ kind: 'policy', policyKind: kind, namespace, name, deleted: false });
    return !existed;
  }

  policyDelete(kind: string, namespace: string, name: string): boolean {
    const gone = this.stmt('DELETE FROM policies WHERE kind = ? AND namespace = ? AND name = ?').run(kind, namespace, name).changes > 0;
    if (gone) this.changed({ kind: 'policy', policyKind: kind, namespace, name, deleted: true });
    return gone;
  }

  metaGet(key: string): string | undefined {
    return (this.stmt('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
  }

  metaSet(key: string, value: string): void {
    this.stmt('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  cidrIdentities(): Map<string, number> {
    const rows = this.stmt('SELECT cidr, identity FROM cidr_identities').all() as Array<{ cidr: string; identity: number }>;
    return new Map(rows.map((r) => [r.cidr, r.identity]));
  }

  /** Replaces the set of CIDR identities in use (they are node-local and derived from policies). */
  cidrIdentitiesSet(entries: ReadonlyArray<{ cidr: string; identity: number }>): void {
    this.transactionSync(() => {
      this.stmt('DELETE FROM cidr_identities').run();
      const ins = this.stmt('INSERT INTO cidr_identities (cidr, identity) VALUES (?, ?)');
      for (const e of entries) ins.run(e.cidr, e.identity);
    });
  }

  // --- identities ----------------------------------------------------------------------------

  identityByKey(labelsKey: string): IdentityRecord | undefined {
    return this.identitySelect('WHERE i.labels_key = ?', labelsKey)[0];
  }

  identityGet(id: number): IdentityRecord | undefined {
    return this.identitySelect('WHERE i.id = ?', id)[0];
  }

  identityList(): IdentityRecord[] {
    return this.identitySelect('');
  }

  /** The labels of one identity, without the reference count (undefined if it does not exist). */
  identityLabels(id: number): string[] | undefined {
    const r = this.stmt('SELECT labels FROM identities WHERE id = ?').get(id) as { labels: string } | undefined;
    return r && (JSON.parse(r.labels) as string[]);
  }

  /** Every identity's labels, without reference counts. */
  identityLabelsAll(): Map<number, string[]> {
    const rows = this.stmt('SELECT id, labels FROM identities ORDER BY id').all() as Array<{ id: number; labels: string }>;
    return new Map(rows.map((r) => [r.id, JSON.parse(r.labels) as string[]]));
  }

  private identitySelect(where: string, ...params: unknown[]): IdentityRecord[] {
    const rows = this.stmt(
      `SELECT i.id, i.labels_key, i.labels, i.created_at,
              (SELECT COUNT(*) FROM workloads w WHERE w.identity = i.id) AS refs
       FROM identities i ${where} ORDER BY i.id`,
    ).all(...params) as IdentityRow[];
    return rows.map(identityFromRow);
  }

  usedIdentityIds(): number[] {
    return (this.stmt('SELECT id FROM identities ORDER BY id').all() as Array<{ id: number }>).map((r) => r.id);
  }

  identityInsert(id: number, labelsKey: string, labels: string[]): void {
    this.stmt('INSERT INTO identities (id, labels_key, labels, created_at) VALUES (?, ?, ?, ?)')
      .run(id, labelsKey, JSON.stringify(labels), new Date().toISOString());
    this.changed({ kind: 'identity', id, deleted: false });
  }

  /** Deletes identities no workload references any more; returns the ids released. */
  identitiesReleaseUnused(): number[] {
    const ids = (
      this.stmt('SELECT id FROM identities WHERE id NOT IN (SELECT DISTINCT identity FROM workloads)')
        .all() as Array<{ id: number }>
    ).map((r) => r.id);
    const del = this.stmt('DELETE FROM identities WHERE id = ?');
    for (const id of ids) {
      del.run(id);
      this.changed({ kind: 'identity', id, deleted: true });
    }
    return ids;
  }
}
