//! `relay_frames`: the relay's frames (Bind, Bound, Send, Deliver) and their keys.
//!
//! Input: session-creating bind timestamp u64le | frame. Keys are the lab's fixed keys (relay,
//! nodes a and b), so captured frames open; seeds carry the timestamp that keys a captured
//! Send. Asserts the cheap parsers agree with the documented layouts, that whatever opens or
//! verifies re-seals to the same bytes, that a verified Send turns into a smaller Deliver with
//! the same payload, and that a Send built from the input round-trips through the relay.
#![no_main]
use lanmesh_fuzz::{public, seed, static_secret};
use lanmesh_proto::header::{ControlHeader, ControlKind, PROTOCOL_VERSION};
use lanmesh_proto::relay::{
    bind_sender, frame_kind, parse_deliver, send_to_deliver, BindKey, SendFrame, BIND_LEN,
    BOUND_LEN, DELIVER_HEADER, MAX_PAYLOAD, SEND_HEADER, SEND_OVERHEAD,
};
use lanmesh_proto::PublicKey;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Member {
    key: PublicKey,
    /// The member's side and the relay's side of their bind key.
    node_side: BindKey,
    relay_side: BindKey,
}

fn members() -> &'static [Member] {
    static M: OnceLock<Vec<Member>> = OnceLock::new();
    M.get_or_init(|| {
        let relay = public(seed::RELAY);
        [seed::NODE_A, seed::NODE_B]
            .iter()
            .map(|&s| Member {
                key: public(s),
                node_side: BindKey::derive(&static_secret(s), &public(s), &relay),
                relay_side: BindKey::derive(&static_secret(seed::RELAY), &relay, &public(s)),
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let ts = u64::from_le_bytes(data[..8].try_into().unwrap());
    let frame = &data[8..];
    let header = ControlHeader::parse(frame).filter(|h| h.version == PROTOCOL_VERSION);
    let kind = frame_kind(frame);
    assert!(kind.is_none() || kind == header.and_then(|h| h.kind));

    let claimed = bind_sender(frame);
    assert_eq!(
        claimed.is_some(),
        kind == Some(ControlKind::RelayBind) && frame.len() == BIND_LEN
    );
    for m in members() {
        if let Some(t) = m.relay_side.open_bind(frame) {
            assert_eq!(
                claimed,
                Some(m.key),
                "a bind opened with another member's key"
            );
            let nonce = frame[36..48].try_into().unwrap();
            assert_eq!(m.node_side.bind(&m.key, t, nonce)[..], frame[..]);
        }
        if let Some(bound) = m.node_side.open_bound(frame) {
            assert_eq!(frame.len(), BOUND_LEN);
            let nonce = frame[4..16].try_into().unwrap();
            assert_eq!(m.relay_side.bound(&bound, nonce)[..], frame[..]);
        }
    }

    let send = SendFrame::parse(frame);
    assert_eq!(
        send.is_some(),
        kind == Some(ControlKind::RelaySend)
            && (SEND_OVERHEAD..=SEND_OVERHEAD + MAX_PAYLOAD).contains(&frame.len())
    );
    if let Some(send) = send {
        assert_eq!(send.payload_len, frame.len() - SEND_OVERHEAD);
        for m in members() {
            if !m.relay_side.session_key(ts).verify_send(frame) {
                continue;
            }
            let mut buf = frame.to_vec();
            let range = send_to_deliver(&mut buf, frame.len(), &m.key).expect("verified send");
            assert!(range.len() < frame.len(), "deliver not smaller than send");
            let (from, payload) = parse_deliver(&buf[range]).expect("deliver parses");
            assert_eq!(from, m.key);
            assert_eq!(payload, &frame[SEND_HEADER..frame.len() - 16]);
        }
    }
    if let Some((from, payload)) = parse_deliver(frame) {
        assert_eq!(kind, Some(ControlKind::RelayDeliver));
        assert_eq!(from.as_bytes()[..], frame[4..36]);
        assert_eq!(payload.len(), frame.len() - DELIVER_HEADER);
    }

    // A Send built from the input: verifies with the relay's key for the same session (and
    // not for another), and becomes a Deliver of the same payload.
    let (a, b) = (&members()[0], &members()[1]);
    let payload = &frame[..frame.len().min(MAX_PAYLOAD)];
    let mut buf = vec![0u8; SEND_OVERHEAD + payload.len()];
    buf[SEND_HEADER..SEND_HEADER + payload.len()].copy_from_slice(payload);
    let session = ts as u32;
    let n = a
        .node_side
        .session_key(ts)
        .seal_send(session, ts.rotate_left(7), &b.key, &mut buf, payload.len())
        .expect("seal_send");
    assert_eq!(n, buf.len());
    let parsed = SendFrame::parse(&buf).expect("own send parses");
    assert_eq!((parsed.session, parsed.to), (session, b.key));
    assert!(a.relay_side.session_key(ts).verify_send(&buf));
    assert!(!a
        .relay_side
        .session_key(ts.wrapping_add(1))
        .verify_send(&buf));
    assert!(!b.relay_side.session_key(ts).verify_send(&buf));
    let range = send_to_deliver(&mut buf, n, &a.key).expect("deliver");
    assert_eq!(parse_deliver(&buf[range]), Some((a.key, payload)));
});
