//! The messages carried inside the encrypted control channel, encoded with postcard.
//!
//! Every decoder here works on a datagram that already fits in [`MAX_PLAINTEXT`] bytes, so no
//! decoded value can be larger than its input; `decode` additionally checks the documented
//! limits (name length, endpoints per peer, peers per page).

use crate::join_key::JoinSecret;
use crate::key::PublicKey;
use ipnet::Ipv4Net;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};

/// Largest plaintext inside one control datagram. With 32 bytes of framing and tag the datagram
/// stays under 1280 bytes, which crosses any IPv4 or IPv6 path unfragmented.
pub const MAX_PLAINTEXT: usize = 1200;
/// Plaintext size of a node's Hello, padded so the Welcome answer can never be larger.
pub const HELLO_PLAINTEXT: usize = 256;
/// Longest node name (one DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// Most endpoints the coordinator lists for one peer.
pub const MAX_ENDPOINTS: usize = 8;
/// Budget for the peers in one page, leaving room for the page's own fields.
pub const PAGE_BUDGET: usize = MAX_PLAINTEXT - 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed message")]
    Malformed,
    #[error("message breaks a size limit")]
    TooLarge,
}

/// Node → coordinator, inside Noise IK message 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Nanoseconds since the Unix epoch; must grow from one Hello to the next so a recorded
    /// Hello cannot be replayed.
    pub timestamp: u64,
    /// The node's session index: the coordinator puts it on every packet it sends this session.
    pub session: u32,
    pub name: String,
    pub join: Option<JoinSecret>,
}

/// Why the coordinator turned a node away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// A new node came without a join key and the coordinator is not open.
    KeyRequired,
    /// The key is unknown (wrong, or revoked).
    KeyUnknown,
    /// A one-off key that was already used.
    KeyUsed,
    KeyExpired,
    /// The mesh network has no free address left.
    NetworkFull,
    /// Anything else (the message says what).
    Other,
}

/// Coordinator → node, inside Noise IK message 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Welcome {
    Accepted {
        /// The node's final name (a clash with another node's name gets a suffix).
        name: String,
        mesh_ip: Ipv4Addr,
        network: Ipv4Net,
        /// How often the node should send heartbeats, in seconds.
        heartbeat_secs: u16,
        /// The current peer map version (the node pulls it when it differs from what it has).
        map_version: u64,
        /// The node's endpoint as the coordinator saw it.
        endpoint: SocketAddr,
    },
    Rejected {
        reason: RejectReason,
        message: String,
    },
}

/// What a node tells the coordinator on an established session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// "I am alive; this is the peer map version I hold."
    Heartbeat { map_version: u64 },
    /// Asks for the page of the peer map starting at `offset`. The sender pads it with zeros to
    /// [`MAX_PLAINTEXT`] bytes, so the page it earns is never larger than the request.
    GetPeers { map_version: u64, offset: u32 },
    /// The node is going down.
    Goodbye,
}

/// What the coordinator tells a node on an established session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToNode {
    HeartbeatAck {
        map_version: u64,
        endpoint: SocketAddr,
    },
    /// The peer map changed; pull it.
    MapChanged { map_version: u64 },
    /// One page of the peer map at `map_version`: peers `offset .. offset + peers.len()` of
    /// `total`, ordered by mesh IP.
    PeerPage {
        map_version: u64,
        offset: u32,
        total: u32,
        peers: Vec<PeerInfo>,
    },
    /// The node was removed by an admin; its session ends.
    Removed,
}

/// One peer as the coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: String,
    pub public_key: PublicKey,
    pub mesh_ip: Ipv4Addr,
    /// Where the peer can be reached, best first.
    pub endpoints: Vec<SocketAddr>,
    /// Whether the coordinator has heard from the peer recently.
    pub online: bool,
}

/// Encodes `msg` into `out`, padding with zeros up to `pad_to` bytes; returns the length used.
pub fn encode<T: Serialize>(msg: &T, out: &mut [u8], pad_to: usize) -> Result<usize, DecodeError> {
    let used = postcard::to_slice(msg, out)
        .map_err(|_| DecodeError::TooLarge)?
        .len();
    let len = used.max(pad_to.min(out.len()));
    out[used..len].fill(0);
    Ok(len)
}

/// Decodes a message from the front of `bytes` (trailing padding is ignored).
pub fn decode<T: DeserializeOwned + Checked>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_PLAINTEXT {
        return Err(DecodeError::TooLarge);
    }
    let (msg, _padding) =
        postcard::take_from_bytes::<T>(bytes).map_err(|_| DecodeError::Malformed)?;
    if !msg.within_limits() {
        return Err(DecodeError::TooLarge);
    }
    Ok(msg)
}

/// Limits a decoded message must respect beyond what its encoding allows.
pub trait Checked {
    fn within_limits(&self) -> bool;
}

fn name_ok(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
}

impl Checked for Hello {
    fn within_limits(&self) -> bool {
        name_ok(&self.name)
    }
}

impl Checked for Welcome {
    fn within_limits(&self) -> bool {
        match self {
            Welcome::Accepted { name, .. } => name_ok(name),
            Welcome::Rejected { message, .. } => message.len() <= 200,
        }
    }
}

impl Checked for ToCoordinator {
    fn within_limits(&self) -> bool {
        true
    }
}

impl Checked for ToNode {
    fn within_limits(&self) -> bool {
        match self {
            ToNode::PeerPage { peers, .. } => peers
                .iter()
                .all(|p| name_ok(&p.name) && p.endpoints.len() <= MAX_ENDPOINTS),
            _ => true,
        }
    }
}

/// The encoded size of a value (for packing pages).
pub fn encoded_len<T: Serialize>(msg: &T) -> usize {
    postcard::experimental::serialized_size(msg).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u8) -> PeerInfo {
        PeerInfo {
            name: format!("node-{i}"),
            public_key: PublicKey([i; 32]),
            mesh_ip: Ipv4Addr::new(100, 64, 0, i),
            endpoints: vec!["203.0.113.7:41641".parse().unwrap()],
            online: i.is_multiple_of(2),
        }
    }

    #[test]
    fn round_trips() {
        let mut buf = [0u8; MAX_PLAINTEXT];
        let hello = Hello {
            timestamp: 17,
            session: 99,
            name: "laptop".into(),
            join: Some(JoinSecret {
                id: [1; 8],
                secret: [2; 16],
            }),
        };
        let n = encode(&hello, &mut buf, HELLO_PLAINTEXT).unwrap();
        assert_eq!(n, HELLO_PLAINTEXT);
        assert_eq!(decode::<Hello>(&buf[..n]).unwrap(), hello);

        let page = ToNode::PeerPage {
            map_version: 3,
            offset: 0,
            total: 2,
            peers: vec![peer(1), peer(2)],
        };
        let n = encode(&page, &mut buf, 0).unwrap();
        assert_eq!(n, encoded_len(&page));
        assert_eq!(decode::<ToNode>(&buf[..n]).unwrap(), page);

        let get = ToCoordinator::GetPeers {
            map_version: 3,
            offset: 7,
        };
        let n = encode(&get, &mut buf, MAX_PLAINTEXT).unwrap();
        assert_eq!(decode::<ToCoordinator>(&buf[..n]).unwrap(), get);
    }

    #[test]
    fn rejects_garbage_and_broken_limits() {
        assert_eq!(decode::<ToNode>(&[]), Err(DecodeError::Malformed));
        assert_eq!(decode::<ToNode>(&[0xff; 40]), Err(DecodeError::Malformed));
        assert_eq!(
            decode::<ToNode>(&[0u8; MAX_PLAINTEXT + 1]),
            Err(DecodeError::TooLarge)
        );
        let mut buf = [0u8; MAX_PLAINTEXT];
        let long = Hello {
            timestamp: 1,
            session: 1,
            name: "x".repeat(MAX_NAME_LEN + 1),
            join: None,
        };
        let n = encode(&long, &mut buf, 0).unwrap();
        assert_eq!(decode::<Hello>(&buf[..n]), Err(DecodeError::TooLarge));
    }

    #[test]
    fn decoding_any_prefix_never_panics() {
        let mut buf = [0u8; MAX_PLAINTEXT];
        let page = ToNode::PeerPage {
            map_version: 3,
            offset: 0,
            total: 4,
            peers: (1..5).map(peer).collect(),
        };
        let n = encode(&page, &mut buf, 0).unwrap();
        for cut in 0..n {
            let _ = decode::<ToNode>(&buf[..cut]);
            let mut flipped = buf;
            flipped[cut] ^= 0x5a;
            let _ = decode::<ToNode>(&flipped[..n]);
        }
    }

    #[test]
    fn a_length_prefix_cannot_force_a_big_allocation() {
        // A PeerPage claiming 2^32 peers in a few bytes: must fail, not allocate.
        let bytes = [2u8, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode::<ToNode>(&bytes).is_err());
    }
}
