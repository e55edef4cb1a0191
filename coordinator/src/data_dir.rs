//! The coordinator's data directory (mode 0700): its private key (`coordinator.key`, mode 0600)
//! and the SQLite database (`coordinator.db` and its `-wal`/`-shm` files, mode 0600), shared
//! by `serve` and the admin commands. Only `serve`, and `keys create` given an explicit
//! `--data-dir`, create one: an admin command pointed at the wrong place says so instead of
//! making a new coordinator identity.

use crate::control::x25519_public;
use crate::store::{KeyKind, SqliteStore};
use anyhow::{bail, Context};
use ipnet::Ipv4Net;
use lanmesh_common::key_file::load_or_create_private_key;
use lanmesh_common::{is_root, unix_ms};
use lanmesh_proto::{JoinKey, PublicKey};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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

/// Whether opening a data dir may create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// `serve`: create it if it is missing.
    Yes,
    /// Admin commands: it must exist already.
    No,
}

impl DataDir {
    /// Opens the data dir for `serve` (creating it if needed). `network` is the mesh network
    /// the coordinator is about to serve; it must match the one the data dir was created with
    /// while nodes are registered.
    pub fn open(path: Option<&Path>, network: Option<Ipv4Net>) -> anyhow::Result<DataDir> {
        Self::open_with(path, network, Create::Yes)
    }

    /// Opens the data dir for an admin command: it must exist (with its key), unless
    /// `create` allows making one (`keys create --data-dir DIR`).
    pub fn open_admin(path: Option<&Path>, create: Create) -> anyhow::Result<DataDir> {
        Self::open_with(path, None, create)
    }

    fn open_with(
        path: Option<&Path>,
        network: Option<Ipv4Net>,
        create: Create,
    ) -> anyhow::Result<DataDir> {
        let explicit = path.is_some();
        let path = path.map(Path::to_path_buf).unwrap_or_else(default_path);
        let key_file = path.join("coordinator.key");
        if create == Create::No && !key_file.exists() {
            let readable = fs::metadata(&path).is_ok();
            match (explicit, readable, is_root()) {
                (_, true, _) if fs::read_dir(&path).is_err() => bail!(
                    "cannot read the data dir {}: run with sudo or pass --data-dir",
                    path.display()
                ),
                (true, _, _) => bail!(
                    "no coordinator data dir at {}: check --data-dir (only `coordinator serve` \
                     creates one)",
                    path.display()
                ),
                (false, _, false) => bail!(
                    "no coordinator data dir at {}: run this as the user that runs `coordinator \
                     serve` (with sudo if it runs as root), or pass --data-dir",
                    path.display()
                ),
                (false, _, true) => bail!(
                    "no coordinator data dir at {}: start `coordinator serve` once, or pass \
                     --data-dir",
                    path.display()
                ),
            }
        }
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
        // An existing dir keeps whatever mode it was made with: make it owner-only.
        if let Ok(meta) = fs::metadata(&path) {
            if meta.permissions().mode() & 0o077 != 0 {
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o700));
            }
        }
        let private = load_or_create_private_key(&key_file)?;
        let db = path.join("coordinator.db");
        // Create the database owner-only before SQLite does (it would use the umask, and give
        // its -wal and -shm files the same mode).
        if !db.exists() {
            let _ = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&db);
        }
        let mut store = SqliteStore::open(&db)
            .with_context(|| format!("cannot open the database {}", db.display()))?;
        for file in ["coordinator.db", "coordinator.db-wal", "coordinator.db-shm"] {
            let _ = fs::set_permissions(path.join(file), fs::Permissions::from_mode(0o600));
        }
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
