//! What the lanmesh fuzz targets share: fixed identities (keys from fixed seeds, the same the
//! corpus capture lab uses, so captured packets authenticate inside the targets), the lab's
//! addresses, a virtual clock and the record framing of the entry-point targets.
//!
//! Entry-point targets (`coordinator`, `forwarder`, `control_client`, `node_mesh`) read their
//! input as a few config bytes (target specific) followed by records:
//!
//! ```text
//! record = dt u8 | ctl u8 | len u16le | data[len]     (the last record may be short)
//! dt:  time step before the record (see `step_ms`)
//! ctl: src = ctl & 7 (index into `ADDRS`), op = ctl >> 3 (0 = raw datagram; others are
//!      target-specific synthesized actions that use `data` as material)
//! ```
//!
//! A captured datagram becomes a record `dt, src, op 0`, so seeds are real packets.

use lanmesh_proto::join_key::JoinSecret;
use lanmesh_proto::PublicKey;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// Key seeds (every byte of the private key): the capture lab writes exactly these keys into
/// its key files, so packets captured there are sealed with these identities.
pub mod seed {
    pub const COORDINATOR: u8 = 100;
    pub const NODE_A: u8 = 1;
    pub const NODE_B: u8 = 2;
    pub const NODE_C: u8 = 3;
    /// A node that joins without a key (and is turned away).
    pub const NODE_D: u8 = 4;
    pub const RELAY: u8 = 50;
    /// A key nobody lists.
    pub const STRANGER: u8 = 9;
}

pub fn secret(seed: u8) -> [u8; 32] {
    [seed; 32]
}

pub fn static_secret(seed: u8) -> x25519_dalek::StaticSecret {
    x25519_dalek::StaticSecret::from(secret(seed))
}

pub fn public(seed: u8) -> PublicKey {
    PublicKey::from(x25519_dalek::PublicKey::from(&static_secret(seed)))
}

/// Join keys the lab coordinator and the `coordinator` target both hold.
pub const JOIN_NODE: JoinSecret = JoinSecret {
    id: [0x11; 8],
    secret: [0x22; 16],
};
pub const JOIN_RELAY: JoinSecret = JoinSecret {
    id: [0x33; 8],
    secret: [0x44; 16],
};
/// A one-off node key (only the `coordinator` target has it).
pub const JOIN_ONE_OFF: JoinSecret = JoinSecret {
    id: [0x55; 8],
    secret: [0x66; 16],
};

/// The capture lab's addresses (and the targets'): index = `src` of a record.
pub const ADDR_NAMES: [&str; 8] = [
    "203.0.113.11:41641",  // 0: node a
    "203.0.113.12:41641",  // 1: node b
    "203.0.113.13:41641",  // 2: node c
    "203.0.113.14:41641",  // 3: node d (no join key)
    "203.0.113.20:3479",   // 4: relay
    "203.0.113.10:3478",   // 5: coordinator
    "[2001:db8::7]:41641", // 6: an IPv6 source
    "198.51.100.7:5555",   // 7: a stranger
];
pub const A: usize = 0;
pub const B: usize = 1;
pub const C: usize = 2;
pub const RELAY: usize = 4;
pub const COORDINATOR: usize = 5;

pub fn addr(i: usize) -> SocketAddr {
    static ADDRS: OnceLock<Vec<SocketAddr>> = OnceLock::new();
    ADDRS.get_or_init(|| ADDR_NAMES.iter().map(|a| a.parse().unwrap()).collect())[i % 8]
}

/// The index of `a` in [`ADDR_NAMES`], if it is one of them.
pub fn addr_index(a: SocketAddr) -> Option<usize> {
    (0..8).find(|&i| addr(i) == a)
}

/// Unix ms the virtual clock starts at (2023-11-14), so stored times look real.
pub const T0_MS: u64 = 1_700_000_000_000;

/// The instant of virtual wall-clock millisecond `ms` (`T0_MS` is the first one seen).
pub fn at(ms: u64) -> std::time::Instant {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now)
        + std::time::Duration::from_millis(ms.saturating_sub(T0_MS))
}

/// A record's time step: 0..=127 → 10 ms steps (up to 1.27 s), 128..=255 → whole seconds
/// (1 s .. 128 s), so one record can reach every timer (heartbeats, expiry after 60 s).
pub fn step_ms(dt: u8) -> u64 {
    if dt < 128 {
        dt as u64 * 10
    } else {
        (dt as u64 - 127) * 1000
    }
}

/// The inverse of [`step_ms`] (rounded down), for turning captured gaps into records.
pub fn dt_for_ms(ms: u64) -> u8 {
    if ms < 1280 {
        (ms / 10) as u8
    } else {
        (127 + (ms / 1000).min(128)) as u8
    }
}

pub struct Record<'a> {
    pub dt: u8,
    pub src: usize,
    pub op: u8,
    pub data: &'a [u8],
}

/// Iterates over the records of an input (see the module docs).
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Records { rest: input }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;
    fn next(&mut self) -> Option<Record<'a>> {
        if self.rest.len() < 4 {
            return None;
        }
        let (head, rest) = self.rest.split_at(4);
        let len = (u16::from_le_bytes([head[2], head[3]]) as usize).min(rest.len());
        let (data, rest) = rest.split_at(len);
        self.rest = rest;
        Some(Record {
            dt: head[0],
            src: (head[1] & 7) as usize,
            op: head[1] >> 3,
            data,
        })
    }
}

/// Appends a record to `out` (for seed writers).
pub fn write_record(out: &mut Vec<u8>, dt: u8, src: usize, op: u8, data: &[u8]) {
    let len = data.len().min(u16::MAX as usize);
    out.push(dt);
    out.push((op << 3) | (src as u8 & 7));
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&data[..len]);
}

/// Whether the assertion for a known (reported, not yet fixed) bug is switched off:
/// `LANMESH_FUZZ_KNOWN_BUGS=name,name` (or `all`). By default every assertion is on, so CI
/// fails until the bug is fixed; the switch lets a benchmark or a long run look past it.
pub fn known_bug_allowed(name: &str) -> bool {
    static ALLOWED: OnceLock<Vec<String>> = OnceLock::new();
    ALLOWED
        .get_or_init(|| {
            std::env::var("LANMESH_FUZZ_KNOWN_BUGS")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|a| a == name || a == "all")
}

/// Lowercase hex, for assertion messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
