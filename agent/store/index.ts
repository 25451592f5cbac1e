import { SqliteStore } from './sqlite-store.js';
import type { Store } from './store.js';

export type { Store, StoreChange, StoreReader, StoreTx, TransactionOptions, WorkloadStatus } from './store.js';
export type * from './types.js';

/** The embedded single-host store at `path` (`:memory:` for a throwaway one). */
export function sqliteStoreOpen(path: string): Store {
  return new SqliteStore(path);
}
