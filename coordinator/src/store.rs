//! SQLite storage for nodes and join keys: the serving coordinator and the admin commands
//! (`keys create`, `nodes remove` …) open the same database, which runs in WAL mode so they can
//! work side by side. Every commit is durable (`synchronous=FULL`): a printed key, an admitted
//! node and a spent one-off key survive a power cut. A busy database is reported as
//! [`is_busy`], for the caller to retry.

use crate::control::{AdmitError, StoreError};
use crate::registry::NodeRecord;
use lanmesh_proto::join_key::{hex_id, JoinSecret};
use lanmesh_proto::messages::Role;
use lanmesh_proto::PublicKey;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use subtle::ConstantTimeEq;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    public_key    BLOB PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL DEFAULT 'node',
    mesh_ip       TEXT UNIQUE,
    endpoint      TEXT,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    hello_ts      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS join_keys (
    id          BLOB PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    reusable    INTEGER NOT NULL,
    relay       INTEGER NOT NULL DEFAULT 0,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER,
    uses        INTEGER NOT NULL DEFAULT 0,
    last_use_ms INTEGER,
    revoked     INTEGER NOT NULL DEFAULT 0
);
";

/// secret_hash, reusable, relay, expires_ms, uses, revoked
type KeyCheckRow = (Vec<u8>, bool, bool, Option<i64>, i64, bool);

/// What a join key admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyKind {
    /// Any number of nodes (else one).
    pub reusable: bool,
    /// Relays instead of nodes.
    pub relay: bool,
}

/// What [`SqliteStore::rename_node`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameOutcome {
    Renamed,
    NotFound,
    /// Another node has that name.
    Taken,
}

pub struct SqliteStore {
    conn: Connection,
    data_version: i64,
}

/// A join key as `keys list` shows it (never the secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyRow {
    pub id: String,
    pub reusable: bool,
    /// A key for relays (`keys create --relay`), not for nodes.
    pub relay: bool,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub uses: u64,
    pub revoked: bool,
}

impl KeyRow {
    /// Whether the key could still admit a node at `now_ms`.
    pub fn usable(&self, now_ms: u64) -> bool {
        !self.revoked
            && self.expires_ms.is_none_or(|e| e > now_ms)
            && (self.reusable || self.uses == 0)
    }
}

fn secret_hash(secret: &JoinSecret) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(secret.id);
    h.update(secret.secret);
    h.finalize().into()
}

fn err(e: rusqlite::Error) -> StoreError {
    StoreError(e.to_string())
}

/// Whether a storage error only means another process holds the database: try again.
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// The error text storage reports when the database is busy (see [`AdmitError::Storage`]).
pub const BUSY: &str = "database is busy";

fn admit_err(e: rusqlite::Error) -> AdmitError {
    if is_busy(&e) {
        AdmitError::Storage(BUSY.into())
    } else {
        AdmitError::Storage(e.to_string())
    }
}

fn node_from_row(row: &rusqlite::Row) -> rusqlite::Result<NodeRecord> {
    let key: Vec<u8> = row.get(0)?;
    let mesh_ip: Option<String> = row.get(2)?;
    let endpoint: Option<String> = row.get(3)?;
    let role: String = row.get(6)?;
    let hello_ts: i64 = row.get(7)?;
    let bad =
        |i| rusqlite::Error::InvalidColumnType(i, "value".into(), rusqlite::types::Type::Text);
    Ok(NodeRecord {
        public_key: PublicKey(key.try_into().map_err(|_| bad(0))?),
        name: row.get(1)?,
        mesh_ip: match mesh_ip {
            Some(ip) => Some(ip.parse().map_err(|_| bad(2))?),
            None => None,
        },
        role: if role == "relay" {
            Role::Relay
        } else {
            Role::Node
        },
        endpoint: endpoint.and_then(|e| e.parse().ok()),
        first_seen_ms: row.get::<_, i64>(4)? as u64,
        last_seen_ms: row.get::<_, i64>(5)? as u64,
        hello_ts: hello_ts as u64,
    })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Node => "node",
        Role::Relay => "relay",
    }
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        Self::migrate(&conn)?;
        let mut store = SqliteStore {
            conn,
            data_version: 0,
        };
        store.data_version = store.current_data_version();
        Ok(store)
    }

    /// Creates the tables, and adds the columns a database of an older version lacks.
    fn migrate(conn: &Connection) -> Result<(), StoreError> {
        conn.execute_batch(SCHEMA).map_err(err)?;
        let has_hello_ts = conn.prepare("SELECT hello_ts FROM nodes LIMIT 0").is_ok();
        if !has_hello_ts {
            conn.execute_batch("ALTER TABLE nodes ADD COLUMN hello_ts INTEGER NOT NULL DEFAULT 0")
                .map_err(err)?;
        }
        Ok(())
    }

    /// How long a statement waits for a lock held elsewhere before it reports busy.
    pub fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<(), StoreError> {
        self.conn.busy_timeout(timeout).map_err(err)
    }

    /// An in-memory database (tests, fuzzing).
    pub fn in_memory() -> SqliteStore {
        let conn = Connection::open_in_memory().expect("in-memory sqlite");
        Self::migrate(&conn).expect("schema");
        SqliteStore {
            conn,
            data_version: 0,
        }
    }

    fn current_data_version(&self) -> i64 {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap_or(0)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(err)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(|_| ())
            .map_err(err)
    }

    /// Stores a new join key (only a hash of its secret).
    pub fn add_key(
        &self,
        secret: &JoinSecret,
        kind: KeyKind,
        expires_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO join_keys (id, secret_hash, reusable, relay, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    secret.id.as_slice(),
                    secret_hash(secret).as_slice(),
                    kind.reusable,
                    kind.relay,
                    now_ms as i64,
                    expires_ms.map(|e| e as i64)
                ],
            )
            .map(|_| ())
            .map_err(err)
    }

    pub fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, reusable, created_ms, expires_ms, uses, revoked, relay
                 FROM join_keys ORDER BY created_ms",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                let id: Vec<u8> = r.get(0)?;
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&id[..8.min(id.len())]);
                Ok(KeyRow {
                    id: hex_id(&raw),
                    reusable: r.get(1)?,
                    created_ms: r.get::<_, i64>(2)? as u64,
                    expires_ms: r.get::<_, Option<i64>>(3)?.map(|e| e as u64),
                    uses: r.get::<_, i64>(4)? as u64,
                    revoked: r.get(5)?,
                    relay: r.get(6)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Revokes the keys whose id is `id_hex`; returns how many were revoked.
    pub fn revoke_key(&self, id_hex: &str) -> Result<usize, StoreError> {
        let keys = self.list_keys()?;
        let mut n = 0;
        for k in keys.iter().filter(|k| k.id == id_hex) {
            let raw: Vec<u8> = (0..8)
                .map(|i| u8::from_str_radix(&k.id[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect();
            n += self
                .conn
                .execute("UPDATE join_keys SET revoked = 1 WHERE id = ?1", [raw])
                .map_err(err)?;
        }
        Ok(n)
    }

    /// Renames the node called `old` to `new`.
    pub fn rename_node(&self, old: &str, new: &str) -> Result<RenameOutcome, StoreError> {
        let taken: bool = self
            .conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM nodes WHERE name = ?1)",
                [new],
                |r| r.get(0),
            )
            .map_err(err)?;
        if taken && old != new {
            return Ok(RenameOutcome::Taken);
        }
        let n = self
            .conn
            .execute("UPDATE nodes SET name = ?2 WHERE name = ?1", [old, new])
            .map_err(err)?;
        Ok(if n > 0 {
            RenameOutcome::Renamed
        } else {
            RenameOutcome::NotFound
        })
    }

    /// Removes the node called `name`; returns whether there was one.
    pub fn remove_node(&self, name: &str) -> Result<bool, StoreError> {
        self.conn
            .execute("DELETE FROM nodes WHERE name = ?1", [name])
            .map(|n| n > 0)
            .map_err(err)
    }

    fn check_and_consume(
        tx: &rusqlite::Transaction,
        join: &JoinSecret,
        role: Role,
        now_ms: u64,
    ) -> Result<(), AdmitError> {
        let storage = admit_err;
        let row: Option<KeyCheckRow> = tx
            .query_row(
                "SELECT secret_hash, reusable, relay, expires_ms, uses, revoked
                 FROM join_keys WHERE id = ?1",
                [join.id.as_slice()],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()
            .map_err(storage)?;
        let Some((hash, reusable, relay, expires_ms, uses, revoked)) = row else {
            return Err(AdmitError::KeyUnknown);
        };
        let matches: bool = secret_hash(join).as_slice().ct_eq(hash.as_slice()).into();
        if !matches || revoked {
            return Err(AdmitError::KeyUnknown);
        }
        if relay != (role == Role::Relay) {
            return Err(AdmitError::WrongKind);
        }
        if expires_ms.is_some_and(|e| e as u64 <= now_ms) {
            return Err(AdmitError::KeyExpired);
        }
        if !reusable && uses > 0 {
            return Err(AdmitError::KeyUsed);
        }
        tx.execute(
            "UPDATE join_keys SET uses = uses + 1, last_use_ms = ?2 WHERE id = ?1",
            params![join.id.as_slice(), now_ms as i64],
        )
        .map_err(storage)?;
        Ok(())
    }
}

impl SqliteStore {
    /// Stores a new node; when `join` is given, validates and consumes that key in the same
    /// transaction (a one-off key admits exactly one node, however many race for it).
    pub fn add_node(
        &mut self,
        record: &NodeRecord,
        join: Option<&JoinSecret>,
        now_ms: u64,
    ) -> Result<(), AdmitError> {
        let storage = admit_err;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        if let Some(join) = join {
            Self::check_and_consume(&tx, join, record.role, now_ms)?;
        }
        tx.execute(
            "INSERT INTO nodes (public_key, name, mesh_ip, endpoint, first_seen_ms, last_seen_ms,
                                role, hello_ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                record.public_key.as_bytes().as_slice(),
                record.name,
                record.mesh_ip.map(|ip| ip.to_string()),
                record.endpoint.map(|e| e.to_string()),
                record.first_seen_ms as i64,
                record.last_seen_ms as i64,
                role_name(record.role),
                record.hello_ts as i64
            ],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)?;
        self.data_version = self.current_data_version();
        Ok(())
    }

    /// Remembers where and when nodes were last heard from, and the newest Hello timestamps
    /// accepted from them, in one transaction.
    pub fn save_seen(
        &mut self,
        seen: &[(PublicKey, Option<SocketAddr>, u64)],
        hello_ts: &[(PublicKey, u64)],
    ) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (key, endpoint, last_seen_ms) in seen {
            tx.execute(
                "UPDATE nodes SET endpoint = COALESCE(?2, endpoint),
                                  last_seen_ms = MAX(last_seen_ms, ?3)
                 WHERE public_key = ?1",
                params![
                    key.as_bytes().as_slice(),
                    endpoint.map(|e| e.to_string()),
                    *last_seen_ms as i64
                ],
            )?;
        }
        for (key, ts) in hello_ts {
            tx.execute(
                "UPDATE nodes SET hello_ts = MAX(hello_ts, ?2) WHERE public_key = ?1",
                params![key.as_bytes().as_slice(), *ts as i64],
            )?;
        }
        tx.commit()?;
        self.data_version = self.current_data_version();
        Ok(())
    }

    pub fn load_nodes(&mut self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT public_key, name, mesh_ip, endpoint, first_seen_ms, last_seen_ms, role,
                        hello_ts
                 FROM nodes ORDER BY mesh_ip",
            )
            .map_err(err)?;
        let rows = stmt.query_map([], node_from_row).map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Whether another process (an admin command) changed the store since the last call.
    pub fn changed_elsewhere(&mut self) -> bool {
        let v = self.current_data_version();
        let changed = v != self.data_version;
        self.data_version = v;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u8) -> NodeRecord {
        NodeRecord {
            public_key: PublicKey([i; 32]),
            name: format!("n{i}"),
            mesh_ip: Some(std::net::Ipv4Addr::new(100, 64, 0, i)),
            role: Role::Node,
            endpoint: Some(SocketAddr::from(([203, 0, 113, i], 41641))),
            first_seen_ms: 1,
            last_seen_ms: 2,
            hello_ts: 0,
        }
    }

    fn key(store: &SqliteStore, reusable: bool, expires_ms: Option<u64>) -> JoinSecret {
        let s = lanmesh_proto::JoinKey::generate(PublicKey([0; 32])).secret;
        let kind = KeyKind {
            reusable,
            relay: false,
        };
        store.add_key(&s, kind, expires_ms, 0).unwrap();
        s
    }

    #[test]
    fn nodes_are_renamed_to_free_names_only() {
        let mut s = SqliteStore::in_memory();
        let k = key(&s, true, None);
        s.add_node(&record(1), Some(&k), 10).unwrap();
        s.add_node(&record(2), Some(&k), 10).unwrap();
        assert_eq!(s.rename_node("n1", "n2").unwrap(), RenameOutcome::Taken);
        assert_eq!(s.rename_node("n9", "x").unwrap(), RenameOutcome::NotFound);
        assert_eq!(
            s.rename_node("n1", "alice").unwrap(),
            RenameOutcome::Renamed
        );
        assert_eq!(
            s.rename_node("alice", "alice").unwrap(),
            RenameOutcome::Renamed
        );
        let names: Vec<String> = s
            .load_nodes()
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert!(names.contains(&"alice".to_string()) && !names.contains(&"n1".to_string()));
    }

    #[test]
    fn one_off_keys_admit_exactly_one_node() {
        let mut s = SqliteStore::in_memory();
        let k = key(&s, false, None);
        assert_eq!(s.add_node(&record(1), Some(&k), 10), Ok(()));
        assert_eq!(
            s.add_node(&record(2), Some(&k), 10),
            Err(AdmitError::KeyUsed)
        );
        assert_eq!(s.load_nodes().unwrap(), vec![record(1)]);
        assert!(!s.list_keys().unwrap()[0].usable(10));
    }

    #[test]
    fn reusable_expired_wrong_and_revoked_keys() {
        let mut s = SqliteStore::in_memory();
        let reusable = key(&s, true, Some(1000));
        assert_eq!(s.add_node(&record(1), Some(&reusable), 10), Ok(()));
        assert_eq!(s.add_node(&record(2), Some(&reusable), 20), Ok(()));
        assert_eq!(
            s.add_node(&record(3), Some(&reusable), 1000),
            Err(AdmitError::KeyExpired)
        );
        let mut wrong = reusable;
        wrong.secret[0] ^= 1;
        assert_eq!(
            s.add_node(&record(3), Some(&wrong), 20),
            Err(AdmitError::KeyUnknown)
        );
        let unknown = lanmesh_proto::JoinKey::generate(PublicKey([0; 32])).secret;
        assert_eq!(
            s.add_node(&record(3), Some(&unknown), 20),
            Err(AdmitError::KeyUnknown)
        );
        assert_eq!(s.revoke_key(&hex_id(&reusable.id)).unwrap(), 1);
        assert_eq!(
            s.add_node(&record(3), Some(&reusable), 20),
            Err(AdmitError::KeyUnknown)
        );
        assert_eq!(s.load_nodes().unwrap().len(), 2);
    }

    #[test]
    fn a_failed_insert_does_not_burn_the_key() {
        let mut s = SqliteStore::in_memory();
        let k = key(&s, false, None);
        s.add_node(&record(1), None, 1).unwrap();
        // Same public key again: the insert fails, so the key must stay unused.
        assert!(matches!(
            s.add_node(&record(1), Some(&k), 2),
            Err(AdmitError::Storage(_))
        ));
        assert_eq!(s.list_keys().unwrap()[0].uses, 0);
    }

    #[test]
    fn relay_keys_admit_relays_only_and_node_keys_nodes_only() {
        let mut s = SqliteStore::in_memory();
        let node_key = key(&s, true, None);
        let relay_key = lanmesh_proto::JoinKey::generate(PublicKey([0; 32])).secret;
        let kind = KeyKind {
            reusable: true,
            relay: true,
        };
        s.add_key(&relay_key, kind, None, 0).unwrap();
        let mut relay = record(9);
        relay.mesh_ip = None;
        relay.role = Role::Relay;
        assert_eq!(
            s.add_node(&relay, Some(&node_key), 1),
            Err(AdmitError::WrongKind)
        );
        assert_eq!(
            s.add_node(&record(1), Some(&relay_key), 1),
            Err(AdmitError::WrongKind)
        );
        assert_eq!(s.add_node(&relay, Some(&relay_key), 1), Ok(()));
        let mut second = record(8);
        second.mesh_ip = None;
        second.role = Role::Relay;
        assert_eq!(s.add_node(&second, Some(&relay_key), 1), Ok(()));
        let loaded = s.load_nodes().unwrap();
        assert!(loaded.contains(&relay) && loaded.contains(&second));
        assert!(s.list_keys().unwrap().iter().any(|k| k.relay));
    }

    #[test]
    fn seen_and_remove() {
        let mut s = SqliteStore::in_memory();
        s.add_node(&record(1), None, 1).unwrap();
        let ep: SocketAddr = "203.0.113.9:7".parse().unwrap();
        s.save_seen(
            &[(PublicKey([1; 32]), Some(ep), 50)],
            &[(PublicKey([1; 32]), 77)],
        )
        .unwrap();
        let n = &s.load_nodes().unwrap()[0];
        assert_eq!((n.endpoint, n.last_seen_ms, n.hello_ts), (Some(ep), 50, 77));
        // Older values never win; a missing endpoint keeps the stored one.
        s.save_seen(
            &[(PublicKey([1; 32]), None, 40)],
            &[(PublicKey([1; 32]), 5)],
        )
        .unwrap();
        let n = &s.load_nodes().unwrap()[0];
        assert_eq!((n.endpoint, n.last_seen_ms, n.hello_ts), (Some(ep), 50, 77));
        assert!(s.remove_node("n1").unwrap());
        assert!(!s.remove_node("n1").unwrap());
        assert!(s.load_nodes().unwrap().is_empty());
    }

    #[test]
    fn concurrent_processes_see_each_others_changes() {
        let dir = std::env::temp_dir().join(format!("lm-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        let mut serving = SqliteStore::open(&path).unwrap();
        let admin = SqliteStore::open(&path).unwrap();
        let k = key(&admin, false, None);
        assert!(serving.changed_elsewhere());
        assert!(!serving.changed_elsewhere());
        serving.add_node(&record(1), Some(&k), 1).unwrap();
        assert!(!serving.changed_elsewhere());
        admin.remove_node("n1").unwrap();
        assert!(serving.changed_elsewhere());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_locked_database_is_reported_busy_and_an_old_one_is_migrated() {
        let dir = std::env::temp_dir().join(format!("lm-store-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        // A database as version 0.1 made it: no hello_ts column.
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE nodes (public_key BLOB PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                 role TEXT NOT NULL DEFAULT 'node', mesh_ip TEXT UNIQUE, endpoint TEXT,
                 first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL);
                 INSERT INTO nodes VALUES (x'0101010101010101010101010101010101010101010101010101010101010101',
                 'old', 'node', '100.64.0.1', NULL, 1, 2);",
            )
            .unwrap();
        }
        let mut serving = SqliteStore::open(&path).unwrap();
        assert_eq!(serving.load_nodes().unwrap()[0].hello_ts, 0);
        serving
            .set_busy_timeout(std::time::Duration::from_millis(10))
            .unwrap();
        let locker = Connection::open(&path).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let e = serving
            .save_seen(&[(PublicKey([1; 32]), None, 9)], &[])
            .unwrap_err();
        assert!(is_busy(&e), "{e}");
        assert_eq!(
            serving.add_node(&record(2), None, 1),
            Err(AdmitError::Storage(BUSY.into()))
        );
        locker.execute_batch("COMMIT").unwrap();
        assert_eq!(serving.add_node(&record(2), None, 1), Ok(()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
