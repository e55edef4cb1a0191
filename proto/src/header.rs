//! Telling the datagrams on a node's one UDP socket apart, and the lanmesh control header.
//!
//! One socket carries WireGuard (first byte 1..=4, then three zero bytes), STUN (top two bits
//! zero and the magic cookie at bytes 4..8) and lanmesh control packets, which start with `LM`,
//! the protocol version and a kind byte. That 4-byte prefix stays the same in every version so a
//! peer can always tell which version the other side speaks.

/// The control protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;

const MAGIC: [u8; 2] = *b"LM";
pub const HEADER_LEN: usize = 4;
const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// What a datagram on the shared socket is, judged from its first bytes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketClass {
    WireGuard,
    Stun,
    Control,
    Unknown,
}

pub fn classify(datagram: &[u8]) -> PacketClass {
    if datagram.len() >= 4 && datagram[..2] == MAGIC {
        return PacketClass::Control;
    }
    if datagram.len() >= 4 && (1..=4).contains(&datagram[0]) && datagram[1..4] == [0, 0, 0] {
        return PacketClass::WireGuard;
    }
    if datagram.len() >= 20 && datagram[0] & 0xC0 == 0 && datagram[4..8] == STUN_COOKIE {
        return PacketClass::Stun;
    }
    PacketClass::Unknown
}

/// The kinds of control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ControlKind {
    /// Node → coordinator, unauthenticated: "what is your public key?" Padded to
    /// [`KEY_REQUEST_LEN`] so the answer is never larger than the question.
    KeyRequest = 1,
    /// Coordinator → node: the coordinator's public key.
    KeyResponse = 2,
    /// Node → coordinator: Noise IK message 1 (the form without MACs; see
    /// [`ControlKind::HelloMac`]).
    Hello = 3,
    /// Coordinator → node: Noise IK message 2.
    Welcome = 4,
    /// Either way: a message sealed with the session keys.
    Transport = 5,
    /// Answer to a control packet of another protocol version: just this header, carrying the
    /// answering side's version.
    VersionMismatch = 6,
    /// Node ↔ node: a path probe (ping or pong) sealed with the two nodes' keys.
    Probe = 7,
    /// Node → relay: "I am this member; bind me here" (see `relay`).
    RelayBind = 8,
    /// Relay → node: the bind was accepted.
    RelayBound = 9,
    /// Node → relay: forward this WireGuard datagram to a member.
    RelaySend = 10,
    /// Relay → node: a WireGuard datagram from a member.
    RelayDeliver = 11,
    /// Node → coordinator: Noise IK message 1 followed by mac1 and mac2 (see `cookie`). A
    /// coordinator checks mac1 before any Diffie-Hellman; [`ControlKind::Hello`] is the older
    /// form without MACs, still accepted when the coordinator is not under load.
    HelloMac = 12,
    /// Coordinator → node, under load: the cookie to put in mac2 (see `cookie`).
    CookieReply = 13,
}

impl ControlKind {
    fn from_u8(b: u8) -> Option<ControlKind> {
        use ControlKind::*;
        Some(match b {
            1 => KeyRequest,
            2 => KeyResponse,
            3 => Hello,
            4 => Welcome,
            5 => Transport,
            6 => VersionMismatch,
            7 => Probe,
            8 => RelayBind,
            9 => RelayBound,
            10 => RelaySend,
            11 => RelayDeliver,
            12 => HelloMac,
            13 => CookieReply,
            _ => return None,
        })
    }
}

/// Size of a key request datagram, header included.
pub const KEY_REQUEST_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlHeader {
    pub version: u8,
    /// `None` for a kind this version does not know (possible only when `version` differs).
    pub kind: Option<ControlKind>,
}

impl ControlHeader {
    /// Parses the 4-byte prefix of a control packet; `None` if it is not one.
    pub fn parse(datagram: &[u8]) -> Option<ControlHeader> {
        if classify(datagram) != PacketClass::Control {
            return None;
        }
        Some(ControlHeader {
            version: datagram[2],
            kind: ControlKind::from_u8(datagram[3]),
        })
    }
}

/// Writes the header for `kind` at the start of `out`; returns the header length.
pub fn write_header(kind: ControlKind, out: &mut [u8]) -> usize {
    out[..2].copy_from_slice(&MAGIC);
    out[2] = PROTOCOL_VERSION;
    out[3] = kind as u8;
    HEADER_LEN
}

/// A complete key request (header and zero padding).
pub fn key_request() -> [u8; KEY_REQUEST_LEN] {
    let mut out = [0u8; KEY_REQUEST_LEN];
    write_header(ControlKind::KeyRequest, &mut out);
    out
}

/// The 4-byte "I speak another version" answer.
pub fn version_mismatch() -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    write_header(ControlKind::VersionMismatch, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_each_protocol() {
        assert_eq!(classify(&[1, 0, 0, 0, 9, 9]), PacketClass::WireGuard);
        assert_eq!(classify(&[4, 0, 0, 0]), PacketClass::WireGuard);
        assert_eq!(classify(&[5, 0, 0, 0]), PacketClass::Unknown);
        assert_eq!(classify(&[1, 0, 0]), PacketClass::Unknown);
        let mut stun = [0u8; 20];
        stun[1] = 1;
        stun[4..8].copy_from_slice(&STUN_COOKIE);
        assert_eq!(classify(&stun), PacketClass::Stun);
        // A binding success response starts 0x01 0x01: not WireGuard.
        stun[0] = 1;
        assert_eq!(classify(&stun), PacketClass::Stun);
        assert_eq!(classify(&key_request()), PacketClass::Control);
        assert_eq!(classify(b"LM"), PacketClass::Unknown);
        assert_eq!(classify(&[]), PacketClass::Unknown);
    }

    #[test]
    fn header_round_trip_and_unknown_kinds() {
        let h = ControlHeader::parse(&key_request()).unwrap();
        assert_eq!(h.version, PROTOCOL_VERSION);
        assert_eq!(h.kind, Some(ControlKind::KeyRequest));
        let h = ControlHeader::parse(b"LM\x07\xff").unwrap();
        assert_eq!((h.version, h.kind), (7, None));
        assert_eq!(ControlHeader::parse(&[1, 0, 0, 0]), None);
    }
}
