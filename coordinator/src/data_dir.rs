//! The coordinator's data directory: its private key (`coordinator.key`, mode 0600) and the
//! SQLite database (`coordinator.db`), shared by `serve` and the admin commands.

use crate::control::{x25519_public, Store};
use crate::store::{KeyKind, SqliteStore};
use anyhow::{bail, Context};
use ipnet::Ipv4Net;
use lanmesh_common::key_file::load_or_create_private_key;
use lanmesh_common::{is_root, unix_ms};
use lanmesh_proto::{JoinKey, PublicKey};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct DataDir {
    pub path: PathBuf,
    pub private: [u8; 32],
    pub public: PublicKey,
    pub store: SqliteStore,
}

/// A node as `nodes list` shows it.
#[derive(Debug, serde::Serialize)]
pub struct NodeRow {
    pub name: String,
    /// "node" or "relay".
    pub role: String,
    /// Empty for relays.
    pub mesh_ip: String,
    pub public_key: String,
    pub online: bool,
    pub last_seen_secs_ago: u64,
    pub endpoint: Option<String>,
}

pub fn default_path() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/lanmesh-coordinator");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("lanmesh-coordinator")
}

fn permission_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (permission denied: run with sudo or pass --data-dir)"
    } else {
        ""
    }
}

impl DataDir {
    /// Opens (creating if needed) the data dir. `network`, when given, is the mesh network the
    /// coordinator is about to serve; it must match the one the data dir was created with
    /// while nodes are registered.
    pub fn open(path: Option<&Path>, network: Option<Ipv4Net>) -> anyhow::Result<DataDir> {
        let path = path.map(Path::to_path_buf).unwrap_or_else(default_path);
        if let Err(e) = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
        {
            bail!(
                "cannot create data dir {}{}",
                path.display(),
                permission_hint(&e)
            );
        }
        let private = load_or_create_private_key(&path.join("coordinator.key"))?;
        let db = path.join("coordinator.db");
        let mut store = SqliteStore::open(&db)
            .with_context(|| format!("cannot open the database {}", db.display()))?;
        let _ = fs::set_permissions(&db, fs::Permissions::from_mode(0o600));
        if let Some(network) = network {
            match store.meta("network")? {
                Some(old) if old != network.to_string() && !store.load_nodes()?.is_empty() => {
                    bail!(
                        "the data dir {} holds nodes of network {old}, not {network}: \
                     serve with --network {old}, or use a new --data-dir",
                        path.display()
                    )
                }
                _ => store.set_meta("network", &network.to_string())?,
            }
        }
        Ok(DataDir {
            public: PublicKey::from(x25519_public(&private)),
            path,
            private,
            store,
        })
    }

    pub fn create_join_key(
        &self,
        kind: KeyKind,
        expires: Option<Duration>,
    ) -> anyhow::Result<JoinKey> {
        let now = unix_ms();
        let key = JoinKey::generate(self.public);
        let expires_ms = expires.map(|d| now + d.as_millis() as u64);
        self.store
            .add_key(&key.secret, kind, expires_ms, now)
            .context("cannot store the join key")?;
        Ok(key)
    }

    pub fn has_usable_key(&self) -> anyhow::Result<bool> {
        let now = unix_ms();
        Ok(self
            .store
            .list_keys()?
            .iter()
            .any(|k| k.usable(now) && !k.relay))
    }

    pub fn list_nodes(&mut self, offline_after: Duration) -> anyhow::Result<Vec<NodeRow>> {
        let now = unix_ms();
        Ok(self
            .store
            .load_nodes()?
            .into_iter()
            .map(|n| {
                let ago_ms = now.saturating_sub(n.last_seen_ms);
                NodeRow {
                    name: n.name,
                    role: format!("{:?}", n.role).to_lowercase(),
                    mesh_ip: n.mesh_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    public_key: n.public_key.to_string(),
                    online: ago_ms <= offline_after.as_millis() as u64,
                    last_seen_secs_ago: ago_ms / 1000,
                    endpoint: n.endpoint.map(|e| e.to_string()),
                }
            })
            .collect())
    }
}
