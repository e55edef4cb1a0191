//! `messages`: the postcard decoders of the control channel's plaintexts.
//!
//! Input: selector byte (Hello, Welcome, ToCoordinator, ToNode) | plaintext. Asserts that what
//! decodes re-encodes to a value that decodes to the same thing (round trip), that the
//! re-encoding is no longer than the input plus the 64 zero bytes `decode` reads past a short
//! message (fields a neighbouring version did not send), and that a decoded Hello fits its
//! padded size and a decoded Punch its request size (so anything a peer can send can be
//! answered or re-sent without breaking the size rules).
#![no_main]
use lanmesh_proto::messages::{
    decode, encode, encoded_len, Checked, Hello, ToCoordinator, ToNode, Welcome, HELLO_PLAINTEXT,
    MAX_PLAINTEXT, PUNCH_REQUEST_LEN,
};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// What `decode` reads past the end of a message as zeros (`EXTENSION` in messages.rs).
const EXTENSION: usize = 64;

fn round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + Checked + PartialEq + Debug,
{
    let msg = decode::<T>(bytes).ok()?;
    assert!(msg.within_limits());
    let mut buf = [0u8; MAX_PLAINTEXT + EXTENSION];
    let n = encode(&msg, &mut buf, 0).expect("a decoded message re-encodes");
    assert_eq!(n, encoded_len(&msg));
    assert!(
        n <= bytes.len() + EXTENSION,
        "re-encoding ({n} bytes) is larger than the input ({} bytes): {msg:?}",
        bytes.len()
    );
    if n <= MAX_PLAINTEXT {
        assert_eq!(decode::<T>(&buf[..n]).as_ref(), Ok(&msg), "round trip");
    }
    Some(msg)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let mut buf = [0u8; MAX_PLAINTEXT];
    match selector % 4 {
        0 => {
            if let Some(hello) = round_trip::<Hello>(bytes) {
                let n = encode(&hello, &mut buf[..HELLO_PLAINTEXT], HELLO_PLAINTEXT)
                    .expect("every valid Hello fits its padded size");
                assert_eq!(n, HELLO_PLAINTEXT);
            }
        }
        1 => {
            round_trip::<Welcome>(bytes);
        }
        2 => {
            round_trip::<ToCoordinator>(bytes);
        }
        _ => {
            if let Some(msg @ ToNode::Punch { .. }) = round_trip::<ToNode>(bytes) {
                assert!(
                    encoded_len(&msg) <= PUNCH_REQUEST_LEN,
                    "punch larger than its request"
                );
            }
        }
    }
});
