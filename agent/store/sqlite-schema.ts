// The SQLite store's schema: one migration per version, applied in order at open (PRAGMA user_version).
import type Database from 'better-sqlite3';

const SCHEMA_VERSION = 3;

const MIGRATIONS: Record<number, string> = {
  1: `
    CREATE TABLE identities (
      id          INTEGER PRIMARY KEY,
      labels_key  TEXT NOT NULL UNIQUE,
      labels      TEXT NOT NULL,
      created_at  TEXT NOT NULL
    );
    CREATE TABLE workloads (
      namespace    TEXT NOT NULL,
      name         TEXT NOT NULL,
      spec         TEXT NOT NULL,
      mode         TEXT NOT NULL,
      endpoint_id  INTEGER NOT NULL UNIQUE,
      identity     INTEGER NOT NULL REFERENCES identities(id),
      ipv4         TEXT NOT NULL UNIQUE,
      ipv6         TEXT NOT NULL UNIQUE,
      host_ifname  TEXT NOT NULL UNIQUE,
      state        TEXT NOT NULL,
      observed     TEXT,
      error        TEXT,
      created_at   TEXT NOT NULL,
      updated_at   TEXT NOT NULL,
      PRIMARY KEY (namespace, name)
    );
  `,
  2: `
    CREATE TABLE namespaces (
      name        TEXT PRIMARY KEY,
      labels      TEXT NOT NULL,
      created_at  TEXT NOT NULL,
      updated_at  TEXT NOT NULL
    );
    CREATE TABLE policies (
      kind        TEXT NOT NULL,
      namespace   TEXT NOT NULL,
      name        TEXT NOT NULL,
      document    TEXT NOT NULL,
      created_at  TEXT NOT NULL,
      updated_at  TEXT NOT NULL,
      PRIMARY KEY (kind, namespace, name)
    );
    CREATE TABLE meta (
      key         TEXT PRIMARY KEY,
      value       TEXT NOT NULL
    );
    CREATE TABLE cidr_identities (
      cidr        TEXT PRIMARY KEY,
      identity    INTEGER NOT NULL UNIQUE
    );
  `,
  // Reference counts and the release of unused identities look workloads up by identity.
  3: `
    CREATE INDEX workloads_identity ON workloads(identity);
  `,
};

/** Brings the database to SCHEMA_VERSION; refuses a database of a newer kitnet. */
export function schemaMigrate(db: Database.Database): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > SCHEMA_VERSION) {
    throw new Error(`store schema version ${current} is newer than this kitnet (${SCHEMA_VERSION}); upgrade kitnet`);
  }
  for (let v = current + 1; v <= SCHEMA_VERSION; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v}`);
    })();
  }
}
