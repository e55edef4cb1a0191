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
pub const HELLO_PLAINTEXT: usize = 320;
/// Longest node name (one DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// Most local (interface) endpoints a node reports and the coordinator passes on.
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
    /// The node's interface addresses with its port: how peers on the same LAN reach it.
    pub local_endpoints: Vec<SocketAddr>,
    /// A mesh node, or a relay joining with a relay key.
    pub role: Role,
}

/// What joins the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Node,
    /// Forwards WireGuard ciphertext between members that cannot reach each other directly.
    Relay,
}

/// A node's address in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshAddress {
    pub ip: Ipv4Addr,
    pub network: Ipv4Net,
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
        /// The node's mesh address (relays have none).
        mesh: Option<MeshAddress>,
        /// How often the node should send heartbeats, in seconds.
        heartbeat_secs: u16,
        /// The current peer map version (the node pulls it when it differs from what it has).
        map_version: u64,
        /// The node's endpoint as the coordinator saw it.
        endpoint: SocketAddr,
        /// A second port on the coordinator's address that answers STUN: with the main port
        /// it tells whether the node's NAT mapping varies by destination.
        stun_port: Option<u16>,
    },
    Rejected {
        reason: RejectReason,
        message: String,
    },
}

/// What a node tells the coordinator on an established session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// "I am alive; this is the peer map version I hold, and these are my interface
    /// endpoints now."
    Heartbeat {
        map_version: u64,
        local_endpoints: Vec<SocketAddr>,
    },
    /// Asks for the page of the peer map starting at `offset`. The sender pads it with zeros to
    /// [`MAX_PLAINTEXT`] bytes, so the page it earns is never larger than the request.
    GetPeers { map_version: u64, offset: u32 },
    /// "I have traffic for `peer` and no working path": the coordinator tells both sides to
    /// probe each other at once. Padded by the sender to [`PUNCH_REQUEST_LEN`] bytes, so the
    /// answer is never larger.
    Punch { peer: PublicKey },
    /// The node is going down.
    Goodbye,
}

/// Plaintext size of a padded punch request (a [`ToNode::Punch`] fits in it).
pub const PUNCH_REQUEST_LEN: usize = 256;

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
    /// Probe `peer` at these candidates now (it is probing you at the same time).
    Punch {
        peer: PublicKey,
        candidates: Candidates,
    },
    /// The node was removed by an admin; its session ends.
    Removed,
}

/// Where a node may be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidates {
    /// Its public (server-reflexive) endpoint: where the coordinator sees its packets come from.
    pub public: Option<SocketAddr>,
    /// Its interface addresses with its port, for peers on the same LAN.
    pub local: Vec<SocketAddr>,
}

impl Candidates {
    fn within_limits(&self) -> bool {
        self.local.len() <= MAX_ENDPOINTS
    }
}

/// One peer as the coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: String,
    pub public_key: PublicKey,
    pub mesh_ip: Ipv4Addr,
    /// Where the peer can be reached.
    pub candidates: Candidates,
    /// Whether the coordinator has heard from the peer recently.
    pub online: bool,
    /// A node, or a relay (whose mesh IP is unspecified and whose public candidate is where it
    /// forwards).
    pub role: Role,
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
        name_ok(&self.name) && self.local_endpoints.len() <= MAX_ENDPOINTS
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
        match self {
            ToCoordinator::Heartbeat {
                local_endpoints, ..
            } => local_endpoints.len() <= MAX_ENDPOINTS,
            _ => true,
        }
    }
}

impl Checked for ToNode {
    fn within_limits(&self) -> bool {
        match self {
            ToNode::PeerPage { peers, .. } => peers
                .iter()
                .all(|p| name_ok(&p.name) && p.candidates.within_limits()),
            ToNode::Punch { candidates, .. } => candidates.within_limits(),
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
            candidates: Candidates {
                public: Some("203.0.113.7:41641".parse().unwrap()),
                local: vec!["10.0.0.7:41641".parse().unwrap()],
            },
            online: i.is_multiple_of(2),
            role: Role::Node,
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
            local_endpoints: vec!["10.1.0.2:41641".parse().unwrap(); MAX_ENDPOINTS],
            role: Role::Node,
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
    fn a_full_hello_fits_its_padding_and_a_punch_its_request() {
        let mut buf = [0u8; MAX_PLAINTEXT];
        let hello = Hello {
            timestamp: u64::MAX,
            session: u32::MAX,
            name: "x".repeat(MAX_NAME_LEN),
            join: Some(JoinSecret {
                id: [0xff; 8],
                secret: [0xff; 16],
            }),
            local_endpoints: vec!["[2001:db8::1]:65535".parse().unwrap(); MAX_ENDPOINTS],
            role: Role::Relay,
        };
        assert!(encode(&hello, &mut buf, 0).unwrap() <= HELLO_PLAINTEXT);
        let punch = ToNode::Punch {
            peer: PublicKey([0xff; 32]),
            candidates: Candidates {
                public: Some("[2001:db8::1]:65535".parse().unwrap()),
                local: vec!["[2001:db8::1]:65535".parse().unwrap(); MAX_ENDPOINTS],
            },
        };
        assert!(encode(&punch, &mut buf, 0).unwrap() <= PUNCH_REQUEST_LEN);
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
            local_endpoints: vec![],
            role: Role::Node,
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
