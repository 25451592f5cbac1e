import { randomInt } from 'node:crypto';
import { posix } from 'node:path';
import { isRecoverableError, type IKeyValue } from 'etcd3';
import type { Logger } from 'pino';
import { EtcdMutex } from './etcd-mutex.js';
import { inRange, type IdentityRange } from './identity-range.js';
import type { ClusterSession } from './session.js';

/** Cilium's identity allocator prefix (pkg/identity/cache: IdentitiesPath). */
export const IDENTITIES_PREFIX = 'cilium/state/identities/v1';

/** Cilium's allocator: 16 attempts, exponential backoff from 20 ms (capped here at 1 s). */
const MAX_ATTEMPTS = 16;
const BACKOFF_MIN_MS = 20;
const BACKOFF_MAX_MS = 1000;
const LOCK_TIMEOUT_MS = 30_000;

export class ClusterIdentityError extends Error {
  override name = 'ClusterIdentityError';
}

/** etcd did not answer (unreachable, timed out, no quorum): the caller may retry later. */
export class ClusterUnavailableError extends ClusterIdentityError {
  override name = 'ClusterUnavailableError';
}

/** Errors that say etcd is out of reach, not that the request was wrong (etcd3's own test, plus its circuit breaker). */
function etcdUnreachable(err: unknown): boolean {
  return err instanceof Error && (isRecoverableError(err) || err.name === 'BrokenCircuitError' || err.name === 'ClientClosedError');
}
/** Attempts in a row that found etcd out of reach before giving up (etcd3 retries each call itself too). */
const UNREACHABLE_ATTEMPTS = 3;
/**
 * How long an allocation that finds etcd out of reach keeps trying: a member without quorum lets each
 * call wait for its request timeout (7 s) before etcd3 tries the next endpoint, so three attempts
 * alone would keep a registration waiting half a minute.
 */
const UNREACHABLE_BUDGET_MS = 5000;

/** The message of an allocation given up because etcd did not answer. */
function unavailableMessage(labelsKey: string, err: unknown): string {
  return `etcd did not answer (unreachable, or without quorum): ${(err as Error)?.message ?? String(err)}; no identity was allocated for ${labelsKey} and nothing was changed; retry when etcd is back`;
}

/** Every number of the cluster's range has a master key: retrying cannot help. */
export class ClusterIdentityExhaustedError extends ClusterIdentityError {
  override name = 'ClusterIdentityExhaustedError';
}

export interface ClusterIdentityAllocatorOptions {
  range: IdentityRange;
  /** The suffix of this node's `value/` keys: its IPv4 address, else IPv6 (Cilium's choice). */
  nodeSuffix: string;
  log: Logger;
}

const decimal = /^(0|[1-9][0-9]{0,15})$/;

/**
 * Cilium's kvstore identity allocator (pkg/allocator + pkg/kvstore/allocator), against etcd in
 * Cilium's key layout, so kitnet hosts and Cilium agents of one cluster agree on every number:
 *
 * - `id/<n>` = the label key (master key): created only if absent, no lease; the number's owner.
 * - `value/<label key>/<node>` = n (slave key): one per node using the label set, under the node's
 *   lease. An identity is in use while any exists.
 * - `locks/<label key>/<lease hex>`: the etcd mutex every allocator of a label set takes first.
 *
 * Under the lock: an existing number for the label set (a `value/` key whose number's master key
 * still names this label set, or an orphan master key of this label set) is reused; else a random
 * free number of the cluster's range is taken. Every write is one transaction conditioned on still
 * holding the lock and on the master key (create-only for a new number; unchanged for a reused one),
 * so a lost lock or a racing writer makes the attempt fail and retry, never write a second number.
 *
 * Keys and values written by someone else are data, not trusted: a `value/` key that is not a
 * decimal in range, or whose master key names another label set, is ignored; a master key that does
 * not parse still occupies its number.
 */
export class ClusterIdentityAllocator {
  private readonly idPrefix = `${IDENTITIES_PREFIX}/id`;
  private readonly valuePrefix = `${IDENTITIES_PREFIX}/value`;
  private readonly lockPrefix = `${IDENTITIES_PREFIX}/locks`;
  /** Label keys this node references, with their number and count (Cilium's localKeys). */
  private readonly local = new Map<string, { id: number; refs: number }>();
  /** Per label key, the tail of the chain of operations on it in this process. */
  private readonly busy = new Map<string, Promise<unknown>>();

  constructor(
    private readonly session: ClusterSession,
    private readonly opts: ClusterIdentityAllocatorOptions,
  ) {
    if (!opts.nodeSuffix || opts.nodeSuffix.includes('/')) throw new ClusterIdentityError(`node suffix "${opts.nodeSuffix}" must be an address without "/"`);
    session.on('nodeLeaseRenewed', (leaseId) => void this.valueKeysRewrite(leaseId));
  }

  /**
   * After the node lease was lost (its value keys with it): writes this node's value keys again under
   * the new lease, each only while its master key still names the label set (else the number may have
   * been collected and given to others: the next acquire allocates again).
   */
  private async valueKeysRewrite(leaseId: string): Promise<void> {
    const { client } = this.session;
    for (const [labelsKey, { id }] of this.local) {
      const masterKey = `${this.idPrefix}/${id}`;
      try {
        const res = await client.if(masterKey, 'Value', '==', labelsKey).then(client.put(this.valueKey(labelsKey)).value(String(id)).lease(leaseId)).commit();
        if (!res.succeeded) {
          this.local.delete(labelsKey);
          this.opts.log.error({ identity: id, labels: labelsKey }, 'identity was collected while this node\'s lease was lost; it is allocated again on next use');
        }
      } catch (err) {
        this.opts.log.warn({ err, identity: id }, 'cannot write an identity value key under the new lease');
      }
    }
    this.opts.log.info({ identities: this.local.size }, 'identity value keys written again under the new node lease');
  }

  /** The number for this label key (Cilium's format, see kvstoreLabelsKey), allocating if new; counts a reference. */
  async acquire(labelsKey: string): Promise<{ id: number; isNew: boolean }> {
    this.labelsKeyCheck(labelsKey);
    return this.serialised(labelsKey, async () => {
      const held = this.local.get(labelsKey);
      if (held) {
        held.refs++;
        return { id: held.id, isNew: false };
      }
      const got = await this.allocateWithRetries(labelsKey);
      this.local.set(labelsKey, { id: got.id, refs: 1 });
      return got;
    });
  }

  /** Drops a reference; the last one deletes this node's `value/` key (the master key is left to GC). */
  release(labelsKey: string): Promise<boolean> {
    return this.serialised(labelsKey, async () => {
      const held = this.local.get(labelsKey);
      if (!held) return false;
      if (--held.refs > 0) return false;
      await this.session.client.delete().key(this.valueKey(labelsKey)).exec();
      this.local.delete(labelsKey);
      return true;
    });
  }

  /** The number this node holds for a label key, if any. */
  localId(labelsKey: string): number | undefined {
    return this.local.get(labelsKey)?.id;
  }

  valueKey(labelsKey: string): string {
    return `${posix.join(this.valuePrefix, labelsKey)}/${this.opts.nodeSuffix}`;
  }

  private labelsKeyCheck(labelsKey: string): void {
    // Cilium's lookup relies on the trailing `;` (a; must not match a;b;) and on the node suffix being
    // the last path segment; a key path.join would rewrite would not be the key Cilium reads.
    if (!labelsKey.endsWith(';') || posix.join('/x', labelsKey) !== `/x/${labelsKey}`) {
      throw new ClusterIdentityError(`label key "${labelsKey}" is not in Cilium's kvstore format (source:key=value; ...)`);
    }
  }

  private serialised<T>(labelsKey: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.busy.get(labelsKey) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.busy.set(labelsKey, tail);
    void tail.then(() => {
      if (this.busy.get(labelsKey) === tail) this.busy.delete(labelsKey);
    });
    return next;
  }

  private async allocateWithRetries(labelsKey: string): Promise<{ id: number; isNew: boolean }> {
    let lastError: unknown;
    let unreachable = 0;
    const started = Date.now();
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      try {
        const got = await this.allocateOnce(labelsKey);
        if (got) return got;
        lastError = new ClusterIdentityError('another writer got in first');
        unreachable = 0;
      } catch (err) {
        if (err instanceof ClusterIdentityExhaustedError) throw err;
        lastError = err;
        unreachable = etcdUnreachable(err) ? unreachable + 1 : 0;
        if (unreachable >= UNREACHABLE_ATTEMPTS || (unreachable > 0 && Date.now() - started >= UNREACHABLE_BUDGET_MS)) {
          throw new ClusterUnavailableError(unavailableMessage(labelsKey, err), { cause: err });
        }
      }
      this.opts.log.debug({ labels: labelsKey, attempt, err: lastError }, 'identity allocation attempt failed; retrying');
      const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
      await new Promise((r) => setTimeout(r, backoff / 2 + randomInt(Math.ceil(backoff / 2) + 1)));
    }
    if (etcdUnreachable(lastError)) throw new ClusterUnavailableError(unavailableMessage(labelsKey, lastError), { cause: lastError });
    throw new ClusterUnavailableError(`cannot allocate an identity for ${labelsKey} after ${MAX_ATTEMPTS} attempts: ${(lastError as Error)?.message ?? lastError}`, { cause: lastError });
  }

  /** One attempt under the lock; undefined when a condition failed (someone else got in first). */
  private async allocateOnce(labelsKey: string): Promise<{ id: number; isNew: boolean } | undefined> {
    const { client } = this.session;
    const mutex = await EtcdMutex.lock(client, await this.session.lockLeaseId(), posix.join(this.lockPrefix, labelsKey), LOCK_TIMEOUT_MS);
    try {
      const masters = await this.masterKeys();
      const existing = (await this.idFromValueKeys(labelsKey, masters)) ?? this.orphanMaster(labelsKey, masters);
      const id = existing ?? this.freeId(masters);
      if (id === undefined) throw new ClusterIdentityExhaustedError(`no free identity left in ${this.opts.range.min}-${this.opts.range.max}`);
      const masterKey = `${this.idPrefix}/${id}`;
      const putValue = client.put(this.valueKey(labelsKey)).value(String(id)).lease(await this.session.nodeLeaseId());
      const txn = client.if(mutex.key, 'Create', '==', mutex.revision);
      const res =
        existing !== undefined
          ? await txn.and(masterKey, 'Value', '==', labelsKey).then(putValue).commit()
          : await txn.and(masterKey, 'Create', '==', 0).then(client.put(masterKey).value(labelsKey), putValue).commit();
      if (!res.succeeded) return undefined;
      this.opts.log.debug({ labels: labelsKey, identity: id, isNew: existing === undefined }, 'identity allocated in etcd');
      return { id, isNew: existing === undefined };
    } finally {
      await mutex.unlock().catch((err: unknown) => this.opts.log.warn({ err, lock: mutex.key }, 'cannot release an etcd lock; it goes with the lock lease'));
    }
  }

  /** Every master key: number -> its value (label key) as text; unparsable numbers are skipped. */
  private async masterKeys(): Promise<Map<number, string>> {
    const res = await this.session.client.getAll().prefix(`${this.idPrefix}/`).exec();
    const out = new Map<number, string>();
    for (const kv of res.kvs) {
      const suffix = kv.key.toString('latin1').slice(this.idPrefix.length + 1);
      if (decimal.test(suffix)) out.set(Number(suffix), kv.value.toString('utf8'));
    }
    return out;
  }

  /**
   * The number other nodes' `value/` keys give this exact label key (Cilium's prefixMatchesKey: the
   * node suffix must follow directly), checked against its master key.
   */
  private async idFromValueKeys(labelsKey: string, masters: Map<number, string>): Promise<number | undefined> {
    const prefix = posix.join(this.valuePrefix, labelsKey);
    const res = await this.session.client.getAll().prefix(`${prefix}/`).exec();
    for (const kv of res.kvs as IKeyValue[]) {
      const key = kv.key.toString('utf8');
      if (key.lastIndexOf('/') !== prefix.length) continue;
      const text = kv.value.toString('utf8');
      const id = Number(text);
      if (!decimal.test(text) || !inRange(this.opts.range, id) || masters.get(id) !== labelsKey) {
        this.opts.log.warn({ key, value: text.slice(0, 64) }, 'ignoring an identity value key that does not match its master key or range');
        continue;
      }
      return id;
    }
    return undefined;
  }

  /** A master key in range that names this label set though no node uses it any more (not yet collected). */
  private orphanMaster(labelsKey: string, masters: Map<number, string>): number | undefined {
    let best: number | undefined;
    for (const [id, value] of masters) if (value === labelsKey && inRange(this.opts.range, id) && (best === undefined || id < best)) best = id;
    return best;
  }

  /** A random number of the range without a master key (Cilium picks at random so hosts rarely collide). */
  private freeId(masters: Map<number, string>): number | undefined {
    const { min, max } = this.opts.range;
    const size = max - min + 1;
    const start = randomInt(size);
    for (let i = 0; i < size; i++) {
      const id = min + ((start + i) % size);
      if (!masters.has(id)) return id;
    }
    return undefined;
  }
}
