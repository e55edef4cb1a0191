//! The node's state directory (default /var/lib/lanmesh, mode 0700): its private key
//! (`node.key`, 0600), the pinned coordinator key (`coordinator.pub`) and the daemon's local
//! control socket (`node.sock`).

use anyhow::{bail, Context};
use lanmesh_proto::PublicKey;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/lanmesh";

pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    pub fn new(path: Option<PathBuf>) -> StateDir {
        StateDir {
            path: path.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.path.join("node.sock")
    }

    fn pin_file(&self) -> PathBuf {
        self.path.join("coordinator.pub")
    }

    /// Creates the directory (owner-only).
    pub fn create(&self) -> anyhow::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                    "cannot create the state dir {}: run with sudo or pass --state-dir",
                    self.path.display()
                ),
                _ => anyhow::anyhow!("cannot create the state dir {}: {e}", self.path.display()),
            })
    }

    /// The node's private key, generated on first use.
    pub fn private_key(&self) -> anyhow::Result<[u8; 32]> {
        let path = self.path.join("node.key");
        match fs::read_to_string(&path) {
            Ok(text) => {
                let k: PublicKey = text
                    .trim()
                    .parse()
                    .with_context(|| format!("the node key {} is damaged", path.display()))?;
                Ok(k.0)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use rand::RngCore;
                let mut private = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut private);
                // Clamp like X25519 does, so the stored bytes are the key actually used.
                let private = x25519_dalek::StaticSecret::from(private).to_bytes();
                write_private(&path, &format!("{}\n", PublicKey(private)))?;
                Ok(private)
            }
            Err(e) => bail!("cannot read the node key {}: {e}", path.display()),
        }
    }

    pub fn pinned_coordinator(&self) -> anyhow::Result<Option<PublicKey>> {
        match fs::read_to_string(self.pin_file()) {
            Ok(text) => Ok(Some(text.trim().parse().with_context(|| {
                format!("{} is damaged", self.pin_file().display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => bail!("cannot read {}: {e}", self.pin_file().display()),
        }
    }

    pub fn pin_coordinator(&self, key: &PublicKey) -> anyhow::Result<()> {
        let tmp = self.path.join("coordinator.pub.tmp");
        let _ = fs::remove_file(&tmp);
        write_private(&tmp, &format!("{key}\n"))?;
        fs::rename(&tmp, self.pin_file()).context("cannot pin the coordinator key")
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_made_once_and_pins_round_trip() {
        let dir = std::env::temp_dir().join(format!("lm-state-{}", std::process::id()));
        let s = StateDir::new(Some(dir.clone()));
        s.create().unwrap();
        let k1 = s.private_key().unwrap();
        assert_eq!(s.private_key().unwrap(), k1);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(s.pinned_coordinator().unwrap(), None);
        s.pin_coordinator(&PublicKey([3; 32])).unwrap();
        s.pin_coordinator(&PublicKey([4; 32])).unwrap();
        assert_eq!(s.pinned_coordinator().unwrap(), Some(PublicKey([4; 32])));
        fs::remove_dir_all(&dir).unwrap();
    }
}
