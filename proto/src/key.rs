//! Curve25519 public keys as they travel and as people see them (standard base64, like
//! WireGuard's own tools print them).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A node's or coordinator's X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a key must be 44 characters of base64 (32 bytes)")]
    BadEncoding,
}

impl PublicKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short form for logs and tables: the first 8 base64 characters.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl From<x25519_dalek::PublicKey> for PublicKey {
    fn from(k: x25519_dalek::PublicKey) -> Self {
        PublicKey(k.to_bytes())
    }
}

impl From<PublicKey> for x25519_dalek::PublicKey {
    fn from(k: PublicKey) -> Self {
        x25519_dalek::PublicKey::from(k.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let mut out = [0u8; 32];
        match STANDARD.decode_slice(s.trim(), &mut out) {
            Ok(32) if s.trim().len() == 44 => Ok(PublicKey(out)),
            _ => Err(KeyError::BadEncoding),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        let k = PublicKey([7u8; 32]);
        let s = k.to_string();
        assert_eq!(s.len(), 44);
        assert_eq!(s.parse::<PublicKey>().unwrap(), k);
        assert_eq!(k.short(), &s[..8]);
    }

    #[test]
    fn rejects_wrong_lengths_and_garbage() {
        for bad in ["", "abc", "!!!!", &"A".repeat(43), &"A".repeat(48)] {
            assert_eq!(
                bad.parse::<PublicKey>(),
                Err(KeyError::BadEncoding),
                "{bad}"
            );
        }
    }
}
