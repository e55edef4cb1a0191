//! A daemon's state directory (mode 0700): its private key (`<daemon>.key`, 0600), the pinned
//! coordinator key (`coordinator.pub`) and the daemon's local control socket
//! (`<daemon>.sock`). The node's is /var/lib/lanmesh by default, the relay's
//! /var/lib/lanmesh-relay.

use crate::key_file::{load_or_create_private_key, write_private_file};
use anyhow::{bail, Context};
use lanmesh_proto::client::Trust;
use lanmesh_proto::stamp::StampFloor;
use lanmesh_proto::{JoinKey, PublicKey};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

pub struct StateDir {
    pub path: PathBuf,
    /// "node" or "relay": names the key and socket files.
    daemon: &'static str,
}

impl StateDir {
    pub fn new(path: Option<PathBuf>, default: &str, daemon: &'static str) -> StateDir {
        StateDir {
            path: path.unwrap_or_else(|| PathBuf::from(default)),
            daemon,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.path.join(format!("{}.sock", self.daemon))
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

    /// The daemon's private key, generated on first use.
    pub fn private_key(&self) -> anyhow::Result<[u8; 32]> {
        load_or_create_private_key(&self.path.join(format!("{}.key", self.daemon)))
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

    /// Whom to trust as the coordinator: the join key's, else the pinned key; `None` when
    /// there is neither (a node then pins the key on first use).
    pub fn trust(&self, join_key: Option<&JoinKey>) -> anyhow::Result<Option<Trust>> {
        Ok(match (join_key, self.pinned_coordinator()?) {
            (Some(k), _) => Some(Trust::JoinKey(k.coordinator)),
            (None, Some(pinned)) => Some(Trust::Pinned(pinned)),
            (None, None) => None,
        })
    }

    fn stamp_file(&self) -> PathBuf {
        self.path.join("stamp-floor")
    }

    /// The persisted floor for the daemon's timestamps (see `lanmesh_proto::stamp`); 0 when
    /// there is none yet (or it is damaged: the clock is then the only floor).
    pub fn stamp_floor(&self) -> u64 {
        fs::read_to_string(self.stamp_file())
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Persists a new floor for the daemon's timestamps (written atomically).
    pub fn save_stamp_floor(&self, floor: u64) -> anyhow::Result<()> {
        let tmp = self.path.join("stamp-floor.tmp");
        let _ = fs::remove_file(&tmp);
        write_private_file(&tmp, &format!("{floor}\n"))?;
        fs::rename(&tmp, self.stamp_file()).context("cannot save the timestamp floor")
    }

    /// Starts the daemon's timestamps: returns the floor they start above, and the persisted
    /// floor to renew with [`StateDir::renew_stamps`] as the clock runs.
    pub fn start_stamps(&self, wall_ns: u64) -> anyhow::Result<(u64, StampFloor)> {
        let (start, floor) = StampFloor::start(self.stamp_floor(), wall_ns);
        self.save_stamp_floor(floor.persisted)?;
        Ok((start, floor))
    }

    /// Moves the persisted floor ahead when the clock comes close to it (cheap to call often).
    pub fn renew_stamps(&self, floor: &mut StampFloor, wall_ns: u64) {
        if let Some(new) = floor.renew(wall_ns) {
            if let Err(e) = self.save_stamp_floor(new) {
                tracing::warn!("{e:#}");
            }
        }
    }

    pub fn pin_coordinator(&self, key: &PublicKey) -> anyhow::Result<()> {
        let tmp = self.path.join("coordinator.pub.tmp");
        let _ = fs::remove_file(&tmp);
        write_private_file(&tmp, &format!("{key}\n"))?;
        fs::rename(&tmp, self.pin_file()).context("cannot pin the coordinator key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_made_once_and_pins_round_trip() {
        let dir = std::env::temp_dir().join(format!("lm-state-{}", std::process::id()));
        let s = StateDir::new(Some(dir.clone()), "/nonexistent", "node");
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
        assert_eq!(s.stamp_floor(), 0);
        s.save_stamp_floor(17).unwrap();
        s.save_stamp_floor(18).unwrap();
        assert_eq!(s.stamp_floor(), 18);
        fs::remove_dir_all(&dir).unwrap();
    }
}
