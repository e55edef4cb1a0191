//! Join keys: what an admin hands to a new node.
//!
//! A join key carries the coordinator's public key, so the very first contact is authenticated
//! (the node runs Noise IK against exactly that key), plus a key id and a secret. The coordinator
//! stores only the id and a hash of the secret.
//!
//! Text form: `lmk1-` followed by unpadded base64url of `coordinator key (32) | id (8) | secret (16)`.

use crate::key::PublicKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "lmk1-";
const RAW_LEN: usize = 32 + 8 + 16;

/// The part of a join key a node presents to the coordinator (inside the encrypted handshake).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSecret {
    pub id: [u8; 8],
    pub secret: [u8; 16],
}

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "JoinSecret(id {})", hex_id(&self.id))
    }
}

/// Lowercase hex of a key id, as `coordinator keys list` shows it.
pub fn hex_id(id: &[u8; 8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct JoinKey {
    pub coordinator: PublicKey,
    pub secret: JoinSecret,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinKeyError {
    #[error("a join key starts with \"{PREFIX}\"; copy the whole key the coordinator printed")]
    BadPrefix,
    #[error(
        "this join key is damaged (wrong length or characters); copy it again from the coordinator"
    )]
    BadEncoding,
}

impl JoinKey {
    pub fn generate(coordinator: PublicKey) -> JoinKey {
        use rand::RngCore;
        let mut secret = JoinSecret {
            id: [0; 8],
            secret: [0; 16],
        };
        rand::rngs::OsRng.fill_bytes(&mut secret.id);
        rand::rngs::OsRng.fill_bytes(&mut secret.secret);
        JoinKey {
            coordinator,
            secret,
        }
    }
}

impl fmt::Display for JoinKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = [0u8; RAW_LEN];
        raw[..32].copy_from_slice(self.coordinator.as_bytes());
        raw[32..40].copy_from_slice(&self.secret.id);
        raw[40..].copy_from_slice(&self.secret.secret);
        write!(f, "{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }
}

impl fmt::Debug for JoinKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JoinKey(coordinator {:?}, {:?})",
            self.coordinator, self.secret
        )
    }
}

impl FromStr for JoinKey {
    type Err = JoinKeyError;
    fn from_str(s: &str) -> Result<Self, JoinKeyError> {
        let body = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(JoinKeyError::BadPrefix)?;
        let mut raw = [0u8; RAW_LEN + 3];
        match URL_SAFE_NO_PAD.decode_slice(body, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(JoinKeyError::BadEncoding),
        }
        let mut coordinator = [0u8; 32];
        coordinator.copy_from_slice(&raw[..32]);
        let mut secret = JoinSecret {
            id: [0; 8],
            secret: [0; 16],
        };
        secret.id.copy_from_slice(&raw[32..40]);
        secret.secret.copy_from_slice(&raw[40..RAW_LEN]);
        Ok(JoinKey {
            coordinator: PublicKey(coordinator),
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k = JoinKey::generate(PublicKey([9; 32]));
        let text = k.to_string();
        assert!(text.starts_with("lmk1-"));
        assert_eq!(text.parse::<JoinKey>().unwrap(), k);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let k = JoinKey::generate(PublicKey([9; 32]));
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&k.to_string()[5..]));
        assert!(!dbg.contains(&format!("{:?}", k.secret.secret)));
    }

    #[test]
    fn rejects_damage() {
        let text = JoinKey::generate(PublicKey([9; 32])).to_string();
        assert_eq!("nope".parse::<JoinKey>(), Err(JoinKeyError::BadPrefix));
        assert_eq!(
            text[..text.len() - 1].parse::<JoinKey>(),
            Err(JoinKeyError::BadEncoding)
        );
        assert_eq!(
            format!("{text}AAAA").parse::<JoinKey>(),
            Err(JoinKeyError::BadEncoding)
        );
        let mut outside_alphabet = text.clone();
        outside_alphabet.replace_range(10..11, "*");
        assert_eq!(
            outside_alphabet.parse::<JoinKey>(),
            Err(JoinKeyError::BadEncoding)
        );
    }
}
