//! Wire formats, keys and address types shared by the lanmesh coordinator, node and relay.
//!
//! Nothing here does IO: every type turns bytes into values and back, and every decoder treats
//! its input as hostile (bounded lengths, no panics, no allocation beyond the input's size).

pub mod channel;
pub mod client;
#[cfg(test)]
mod client_tests;
pub mod cookie;
pub mod header;
pub mod join_key;
pub mod key;
pub mod log_limit;
pub mod messages;
pub mod outbox;
pub mod probe;
pub mod rate;
pub mod relay;
pub mod replay;
pub mod stamp;
pub mod stun;

pub use header::{PacketClass, PROTOCOL_VERSION};
pub use join_key::JoinKey;
pub use key::{KeyError, PublicKey};

/// The mesh network handed out when the coordinator is not told otherwise (RFC 6598 shared space).
pub const DEFAULT_NETWORK: &str = "100.64.0.0/10";
/// The UDP port a coordinator listens on when none is given (the STUN port: the coordinator
/// answers STUN there too).
pub const DEFAULT_COORDINATOR_PORT: u16 = 3478;
/// The UDP port a node's WireGuard socket binds when none is given.
pub const DEFAULT_NODE_PORT: u16 = 41641;
