//! The messages carried inside the encrypted control channel, encoded with postcard.
//!
//! Every decoder here works on a datagram that already fits in [`MAX_PLAINTEXT`] bytes, so no
//! decoded value can be larger than its input; `decode` additionally checks the documented
//! limits (name length, endpoints per peer, peers per page).
//!
//! **Evolution.** Neighbouring versions must understand each other, so messages only ever
//! change by (a) new enum variants, which an older peer fails to decode and drops, and are only
//! sent to peers that announced the matching capability, and (b) new fields appended at the
//! *end* of a message: an older decoder stops before them (trailing bytes are padding to it),
//! and [`decode`] reads a field missing from an older peer's shorter message as zero (0,
//! `None`, empty, `false`), so every appended field has zero mean "absent".

use crate::join_key::JoinSecret;
use crate::key::PublicKey;
use ipnet::Ipv4Net;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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
    /// What this node understands ([`caps`]; 0 from nodes older than capabilities).
    pub capabilities: u64,
}

/// Capability bits, announced in [`Hello::capabilities`] and [`Welcome::Accepted`].
pub mod caps {
    /// Speaks [`super::ToCoordinator::GetChanges`] / [`super::ToNode::Changes`] (map deltas).
    pub const MAP_DELTAS: u64 = 1;
    /// Address validation: the coordinator puts a challenge in a heartbeat ack sent to an
    /// address it has not validated; the node echoes it in its next heartbeat from there.
    pub const ADDRESS_CHALLENGE: u64 = 2;
    /// Takes [`super::ToNode::Renamed`]: an admin renamed the node.
    pub const RENAME: u64 = 4;
    /// Everything this build speaks.
    pub const ALL: u64 = MAP_DELTAS | ADDRESS_CHALLENGE | RENAME;
}

/// Network-wide switches the coordinator sets for every node, in [`Welcome::Accepted`].
/// A bit set turns something off, so an older coordinator's 0 means the defaults.
pub mod policy {
    /// Nodes carry no broadcast or multicast (`coordinator serve --no-lan-broadcast`).
    pub const NO_LAN_BROADCAST: u64 = 1;
}

/// The DNS domain of peer names when the coordinator names none.
pub const DEFAULT_DOMAIN: &str = "mesh";
/// The longest domain a coordinator hands out.
pub const MAX_DOMAIN_LEN: usize = 63;

/// Whether `domain` can be the mesh's DNS domain: dot-separated labels of lowercase letters,
/// digits and inner hyphens, at most [`MAX_DOMAIN_LEN`] bytes, not all digits.
pub fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= MAX_DOMAIN_LEN
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && !domain.bytes().all(|b| b.is_ascii_digit() || b == b'.')
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
    /// Not now (e.g. an open coordinator's registration limits): try again later.
    TryLater,
}

impl RejectReason {
    /// Whether the rejection is about the join key the node came with: something only the
    /// user can fix (a node that was never admitted stops on it; anything else is retried).
    pub fn is_about_the_key(self) -> bool {
        matches!(
            self,
            RejectReason::KeyRequired
                | RejectReason::KeyUnknown
                | RejectReason::KeyUsed
                | RejectReason::KeyExpired
        )
    }
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
        /// What the coordinator understands ([`caps`]; 0 from older coordinators).
        capabilities: u64,
        /// Network-wide switches ([`policy`]; 0 from older coordinators: everything on).
        policy: u64,
        /// The DNS domain of peer names (`alice.mesh`); empty from older coordinators, which
        /// means [`DEFAULT_DOMAIN`].
        domain: String,
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
    /// Padded by the sender to [`HEARTBEAT_LEN`] bytes (the coordinator never answers with more
    /// bytes than a request had).
    Heartbeat {
        map_version: u64,
        local_endpoints: Vec<SocketAddr>,
        /// The challenge of the last [`ToNode::HeartbeatAck`], echoed from the address it was
        /// sent to (0: none).
        echo: u64,
    },
    /// Asks for the page of the peer map starting at `offset`. The sender pads it with zeros to
    /// [`MAX_PLAINTEXT`] bytes: the coordinator fits the page it earns into the request's size.
    GetPeers { map_version: u64, offset: u32 },
    /// "I have traffic for `peer` and no working path": the coordinator tells both sides to
    /// probe each other at once. Padded by the sender to [`PUNCH_REQUEST_LEN`] bytes, so the
    /// answer is never larger.
    Punch { peer: PublicKey },
    /// The node is going down.
    Goodbye,
    /// Asks for what changed in the peer map since version `since` (which the node holds
    /// whole), page `offset` of the changes up to `map_version`. Padded like `GetPeers`.
    /// Only sent to coordinators with [`caps::MAP_DELTAS`].
    GetChanges {
        since: u64,
        map_version: u64,
        offset: u32,
    },
}

/// Plaintext size of a padded punch request (a [`ToNode::Punch`] fits in it).
pub const PUNCH_REQUEST_LEN: usize = 256;
/// Plaintext size of a padded heartbeat (a [`ToNode::HeartbeatAck`] fits in it).
pub const HEARTBEAT_LEN: usize = 64;

/// What the coordinator tells a node on an established session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToNode {
    HeartbeatAck {
        map_version: u64,
        endpoint: SocketAddr,
        /// Non-zero when this ack went to an address the coordinator has not validated for
        /// the session: echo it in a heartbeat from there.
        challenge: u64,
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
    /// One page of the changes to the peer map between `since` and `map_version`: peers
    /// `offset .. offset + changes.len()` of `total`. With `reset`, the coordinator no longer
    /// knows what changed since `since`: the pages hold the whole map, and whatever is not in
    /// them is gone.
    Changes {
        map_version: u64,
        since: u64,
        offset: u32,
        total: u32,
        reset: bool,
        changes: Vec<Change>,
    },
    /// An admin renamed the node (`coordinator nodes rename`). Only sent to nodes with
    /// [`caps::RENAME`].
    Renamed { name: String },
}

/// One entry of a [`ToNode::Changes`] page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A peer that is new or whose entry changed.
    Peer(PeerInfo),
    /// A peer that was removed.
    Removed(PublicKey),
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

/// Whether a reported interface (LAN) endpoint could be one: a private, shared (carrier NAT)
/// or unique-local address outside the mesh network, or the node's own public address (a host
/// with a public address on an interface). Loopback, link-local, multicast, broadcast,
/// unspecified, port 0 and anyone else's public address are refused: peers would probe them.
pub fn plausible_local(addr: &SocketAddr, mesh: Ipv4Net, public: Option<IpAddr>) -> bool {
    if addr.port() == 0 {
        return false;
    }
    if Some(addr.ip()) == public {
        return true;
    }
    match addr.ip() {
        IpAddr::V4(ip) => {
            let shared = Ipv4Net::new(Ipv4Addr::new(100, 64, 0, 0), 10)
                .expect("valid")
                .contains(&ip);
            (ip.is_private() || shared) && !mesh.contains(&ip)
        }
        IpAddr::V6(ip) => (ip.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Whether a public endpoint could be one: a unicast address outside the mesh network.
pub fn plausible_public(addr: &SocketAddr, mesh: Ipv4Net) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match addr.ip() {
        IpAddr::V4(ip) => {
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || ip.is_broadcast()
                || ip.is_link_local()
                || mesh.contains(&ip))
        }
        IpAddr::V6(ip) => !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast()),
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

/// Zero bytes read past the end of a message for fields an older peer did not send.
const EXTENSION: usize = 64;

/// Decodes a message from the front of `bytes` (trailing padding is ignored; fields missing at
/// the end, from an older peer, read as zero: see the module docs).
pub fn decode<T: DeserializeOwned + Checked>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_PLAINTEXT {
        return Err(DecodeError::TooLarge);
    }
    if bytes.is_empty() {
        return Err(DecodeError::Malformed);
    }
    let mut extended = [0u8; MAX_PLAINTEXT + EXTENSION];
    extended[..bytes.len()].copy_from_slice(bytes);
    let (msg, _padding) = postcard::take_from_bytes::<T>(&extended[..bytes.len() + EXTENSION])
        .map_err(|_| DecodeError::Malformed)?;
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
            Welcome::Accepted { name, domain, .. } => {
                name_ok(name) && domain.len() <= MAX_DOMAIN_LEN
            }
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
            ToNode::Changes { changes, .. } => changes.iter().all(|c| match c {
                Change::Peer(p) => name_ok(&p.name) && p.candidates.within_limits(),
                Change::Removed(_) => true,
            }),
            ToNode::Renamed { name } => name_ok(name),
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
            capabilities: caps::ALL,
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
            capabilities: u64::MAX,
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
            capabilities: 0,
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

    /// The messages as version 0.1 (before capabilities) encoded them.
    mod old {
        use super::super::{Candidates, MeshAddress, Role};
        use crate::join_key::JoinSecret;
        use serde::{Deserialize, Serialize};
        use std::net::SocketAddr;

        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        pub struct Hello {
            pub timestamp: u64,
            pub session: u32,
            pub name: String,
            pub join: Option<JoinSecret>,
            pub local_endpoints: Vec<SocketAddr>,
            pub role: Role,
        }
        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        pub enum Welcome {
            Accepted {
                name: String,
                mesh: Option<MeshAddress>,
                heartbeat_secs: u16,
                map_version: u64,
                endpoint: SocketAddr,
                stun_port: Option<u16>,
            },
        }
        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        pub enum ToNode {
            HeartbeatAck {
                map_version: u64,
                endpoint: SocketAddr,
            },
            MapChanged {
                map_version: u64,
            },
            PeerPage,
            Punch {
                peer: crate::PublicKey,
                candidates: Candidates,
            },
        }
        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        pub enum ToCoordinator {
            Heartbeat {
                map_version: u64,
                local_endpoints: Vec<SocketAddr>,
            },
        }
    }

    #[test]
    fn neighbouring_versions_understand_each_other() {
        let mut buf = [0u8; MAX_PLAINTEXT];
        let ep: SocketAddr = "203.0.113.5:41641".parse().unwrap();
        // An old node's Hello (zero-padded, as old nodes send it) reads as "no capabilities".
        let old_hello = old::Hello {
            timestamp: 5,
            session: 6,
            name: "old".into(),
            join: None,
            local_endpoints: vec![ep],
            role: Role::Node,
        };
        let n = encode(&old_hello, &mut buf, HELLO_PLAINTEXT).unwrap();
        let h: Hello = decode(&buf[..n]).unwrap();
        assert_eq!((h.timestamp, h.capabilities), (5, 0));
        // A new coordinator's Welcome reads fine in an old node (capabilities are padding).
        let welcome = Welcome::Accepted {
            name: "n".into(),
            mesh: None,
            heartbeat_secs: 5,
            map_version: 9,
            endpoint: ep,
            stun_port: Some(3480),
            capabilities: caps::ALL,
            policy: 0,
            domain: "party".into(),
        };
        let n = encode(&welcome, &mut buf, 0).unwrap();
        let (w, _) = postcard::take_from_bytes::<old::Welcome>(&buf[..n]).unwrap();
        assert!(matches!(w, old::Welcome::Accepted { map_version: 9, .. }));
        // An old coordinator's (unpadded) Welcome reads in a new node, with no capabilities.
        let old_welcome = old::Welcome::Accepted {
            name: "n".into(),
            mesh: None,
            heartbeat_secs: 5,
            map_version: 9,
            endpoint: ep,
            stun_port: None,
        };
        let n = encode(&old_welcome, &mut buf, 0).unwrap();
        match decode::<Welcome>(&buf[..n]).unwrap() {
            Welcome::Accepted {
                capabilities,
                stun_port,
                policy,
                domain,
                ..
            } => {
                assert_eq!((capabilities, stun_port, policy), (0, None, 0));
                assert_eq!(domain, "", "no domain: the node uses the default");
            }
            w => panic!("{w:?}"),
        }
        // Acks with a challenge and heartbeats with an echo, both ways.
        let ack = ToNode::HeartbeatAck {
            map_version: 3,
            endpoint: ep,
            challenge: 77,
        };
        let n = encode(&ack, &mut buf, 0).unwrap();
        let (a, _) = postcard::take_from_bytes::<old::ToNode>(&buf[..n]).unwrap();
        assert_eq!(
            a,
            old::ToNode::HeartbeatAck {
                map_version: 3,
                endpoint: ep
            }
        );
        let old_hb = old::ToCoordinator::Heartbeat {
            map_version: 4,
            local_endpoints: vec![],
        };
        let n = encode(&old_hb, &mut buf, 0).unwrap();
        assert_eq!(
            decode::<ToCoordinator>(&buf[..n]).unwrap(),
            ToCoordinator::Heartbeat {
                map_version: 4,
                local_endpoints: vec![],
                echo: 0
            }
        );
        let hb = ToCoordinator::Heartbeat {
            map_version: 4,
            local_endpoints: vec![ep],
            echo: 99,
        };
        let n = encode(&hb, &mut buf, HEARTBEAT_LEN).unwrap();
        assert_eq!(n, HEARTBEAT_LEN);
        let (h, _) = postcard::take_from_bytes::<old::ToCoordinator>(&buf[..n]).unwrap();
        assert_eq!(
            h,
            old::ToCoordinator::Heartbeat {
                map_version: 4,
                local_endpoints: vec![ep]
            }
        );
        // A variant an old node does not know fails to decode (it drops the datagram).
        let changes = ToNode::Changes {
            map_version: 2,
            since: 1,
            offset: 0,
            total: 0,
            reset: false,
            changes: vec![],
        };
        let n = encode(&changes, &mut buf, 0).unwrap();
        assert!(postcard::take_from_bytes::<old::ToNode>(&buf[..n]).is_err());
    }

    #[test]
    fn a_full_heartbeat_ack_fits_a_padded_heartbeat() {
        let mut buf = [0u8; MAX_PLAINTEXT];
        let ack = ToNode::HeartbeatAck {
            map_version: u64::MAX,
            endpoint: "[2001:db8::1]:65535".parse().unwrap(),
            challenge: u64::MAX,
        };
        assert!(encode(&ack, &mut buf, 0).unwrap() <= HEARTBEAT_LEN);
    }
}
