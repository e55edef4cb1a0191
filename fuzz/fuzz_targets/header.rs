//! `header`: the first-bytes classifier every daemon runs on every datagram, the control
//! header parser, and the node's demultiplexer (`lanmesh_node::demux::route`). Asserts they
//! agree with each other and with the documented prefixes.
#![no_main]
use lanmesh_node::demux::{route, Route};
use lanmesh_proto::header::{classify, ControlHeader, ControlKind, PacketClass};
use lanmesh_proto::relay::frame_kind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let class = classify(data);
    let header = ControlHeader::parse(data);
    assert_eq!(header.is_some(), class == PacketClass::Control);
    match class {
        PacketClass::Control => assert!(data.len() >= 4 && data[..2] == *b"LM"),
        PacketClass::WireGuard => {
            assert!(data.len() >= 4 && (1..=4).contains(&data[0]) && data[1..4] == [0, 0, 0])
        }
        PacketClass::Stun => assert!(
            data.len() >= 20 && data[0] & 0xc0 == 0 && data[4..8] == [0x21, 0x12, 0xa4, 0x42]
        ),
        PacketClass::Unknown => {}
    }
    if let Some(h) = header {
        assert_eq!(h.version, data[2]);
        if let Some(kind) = h.kind {
            assert_eq!(kind as u8, data[3], "kind byte must round-trip");
        }
    }
    // Only the prefix decides: the classification of a datagram does not depend on its tail.
    if data.len() >= 20 {
        assert_eq!(classify(&data[..20]), class);
    }
    // The node's demultiplexer: one route per datagram, consistent with the classifier.
    let expected = match class {
        PacketClass::WireGuard => Route::WireGuard,
        PacketClass::Stun => Route::Stun,
        PacketClass::Unknown => Route::Drop,
        PacketClass::Control if header.and_then(|h| h.kind) == Some(ControlKind::Probe) => {
            Route::Probe
        }
        PacketClass::Control if frame_kind(data).is_some() => Route::Relay,
        PacketClass::Control => Route::Control,
    };
    assert_eq!(route(data), expected);
});
