//! Private keys on disk: base64 text in an owner-only (0600) file that is created once and never
//! overwritten.

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Reads the 32-byte key at `path`, or creates a new random one there.
pub fn load_or_create_private_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let mut key = [0u8; 32];
            match STANDARD.decode_slice(text.trim(), &mut key) {
                Ok(32) => Ok(key),
                _ => bail!("the key file {} is damaged", path.display()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::RngCore;
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            write_private_file(path, &format!("{}\n", STANDARD.encode(key)))?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "not allowed to read the key file {}: run with sudo",
            path.display()
        ),
        Err(e) => bail!("cannot read the key file {}: {e}", path.display()),
    }
}

/// Creates `path` readable by its owner only and writes `text` to it (fails if it exists).
pub fn write_private_file(path: &Path, text: &str) -> anyhow::Result<()> {
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
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_owner_only_and_checked() {
        let dir = std::env::temp_dir().join(format!("lm-keyfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        let k = load_or_create_private_key(&path).unwrap();
        assert_eq!(load_or_create_private_key(&path).unwrap(), k);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(&path, "not a key").unwrap();
        assert!(load_or_create_private_key(&path)
            .unwrap_err()
            .to_string()
            .contains("damaged"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
