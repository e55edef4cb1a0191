//! `stun`: the STUN parser and the answer function the coordinator (both ports) and the relay
//! use. Asserts the answer is never longer than the request, is given only to a Binding
//! request, and parses back to a success for the same transaction carrying the source address.
#![no_main]
use lanmesh_proto::stun::{answer, parse, Message};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    if let Some(
        Message::BindingRequest(tx)
        | Message::BindingSuccess {
            transaction: tx, ..
        },
    ) = parsed
    {
        assert_eq!(tx, data[8..20]);
    }
    for src in ["203.0.113.11:41641", "[2001:db8::7]:65535"] {
        let src: SocketAddr = src.parse().unwrap();
        let mut out = [0u8; 64];
        let Some(n) = answer(src, data, &mut out) else {
            continue;
        };
        assert!(
            n <= data.len(),
            "STUN answer ({n} B) longer than the request ({} B)",
            data.len()
        );
        let Some(Message::BindingRequest(tx)) = parsed else {
            panic!("answered something that is not a binding request: {parsed:?}");
        };
        assert_eq!(
            parse(&out[..n]),
            Some(Message::BindingSuccess {
                transaction: tx,
                mapped: src
            })
        );
    }
});
