//! Where a datagram on the node's one UDP socket goes, judged from its first bytes only: the
//! one place that tells WireGuard, path probes, relay frames, control packets and STUN apart.

use lanmesh_proto::header::{classify, ControlHeader, ControlKind, PacketClass};
use lanmesh_proto::relay::frame_kind;

/// The part of the node a datagram is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The data plane (a peer's WireGuard).
    WireGuard,
    /// A path probe from a peer.
    Probe,
    /// A relay's frame (a bind answer or a delivered datagram).
    Relay,
    /// The coordinator (control protocol).
    Control,
    /// A STUN answer.
    Stun,
    /// Nothing of ours: dropped.
    Drop,
}

pub fn route(datagram: &[u8]) -> Route {
    match classify(datagram) {
        PacketClass::WireGuard => Route::WireGuard,
        PacketClass::Stun => Route::Stun,
        PacketClass::Unknown => Route::Drop,
        PacketClass::Control => {
            let probe =
                ControlHeader::parse(datagram).is_some_and(|h| h.kind == Some(ControlKind::Probe));
            if probe {
                Route::Probe
            } else if frame_kind(datagram).is_some() {
                Route::Relay
            } else {
                Route::Control
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_datagram_has_one_route() {
        assert_eq!(route(&[1, 0, 0, 0, 7]), Route::WireGuard);
        assert_eq!(route(b"LM\x01\x07"), Route::Probe);
        assert_eq!(route(b"LM\x01\x09"), Route::Relay);
        assert_eq!(route(b"LM\x01\x0b"), Route::Relay);
        assert_eq!(route(b"LM\x01\x05"), Route::Control);
        assert_eq!(route(b"LM\x07\x06"), Route::Control);
        assert_eq!(route(&[]), Route::Drop);
        assert_eq!(route(b"hello"), Route::Drop);
    }
}
