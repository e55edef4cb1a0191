//! `channel_hello`: the handshake datagrams (Hello in both forms, Welcome, cookie reply).
//!
//! - `IncomingHello::read` with the fixed coordinator key (captured lab Hellos authenticate:
//!   the lab uses the same key): what authenticates is a Hello by `hello_form`, carries the
//!   session index it claims, and its Welcome is at most as large as the Hello, or refused;
//!   `hello_form`, `hello_session`, `hello_ephemeral` and `mac1_of` agree with the layout.
//! - `Initiator::finish` fed the input after a real `Initiator::start`: it cannot succeed (a
//!   Welcome cannot be forged without the coordinator's key), and `answers` agrees with the
//!   cheap checks `finish` makes.
//! - `CookieOpener::open` fed the input after a real start: a cookie reply cannot be forged
//!   without the Hello's mac1; and a genuine cookie reply round-trips into a mac2 the
//!   coordinator accepts for that source address only, leaving mac1 and the rest intact.
#![no_main]
use lanmesh_fuzz::{addr, public, secret, seed, JOIN_NODE};
use lanmesh_proto::channel::{
    hello_ephemeral, hello_form, hello_session, ChannelError, HelloForm, IncomingHello, Initiator,
    MAX_DATAGRAM,
};
use lanmesh_proto::cookie::{mac1_of, CookieMaker, CookieOpener, Mac1Key, MACS_LEN};
use lanmesh_proto::header::{ControlHeader, ControlKind};
use lanmesh_proto::messages::{caps, DecodeError, Hello, MeshAddress, Role, Welcome};
use libfuzzer_sys::fuzz_target;

fn welcome() -> Welcome {
    Welcome::Accepted {
        name: "a".repeat(63),
        mesh: Some(MeshAddress {
            ip: "100.64.0.1".parse().unwrap(),
            network: "100.64.0.0/10".parse().unwrap(),
        }),
        heartbeat_secs: 15,
        map_version: u64::MAX,
        endpoint: "[2001:db8::7]:41641".parse().unwrap(),
        stun_port: Some(3480),
        capabilities: u64::MAX,
        policy: u64::MAX,
        domain: "a".repeat(63),
    }
}

fn initiator(session: u32, form: HelloForm) -> Initiator {
    let hello = Hello {
        timestamp: 1,
        session,
        name: "a".into(),
        join: Some(JOIN_NODE),
        local_endpoints: vec![],
        role: Role::Node,
        capabilities: caps::ALL,
    };
    Initiator::start(
        &secret(seed::NODE_A),
        &public(seed::COORDINATOR),
        &hello,
        form,
    )
    .expect("start")
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    d.get(at..at + 4)
        .map_or(42, |b| u32::from_le_bytes(b.try_into().unwrap()))
}

fuzz_target!(|data: &[u8]| {
    let form = hello_form(data);
    if form.is_some() {
        assert_eq!(hello_session(data), Some(u32_at(data, 4)));
        assert_eq!(hello_ephemeral(data).unwrap()[..], data[8..40]);
    } else {
        assert_eq!(hello_session(data), None);
    }
    match mac1_of(data) {
        Some(m) => assert_eq!(m[..], data[data.len() - MACS_LEN..data.len() - 16]),
        None => assert!(data.len() < MACS_LEN),
    }
    let coordinator = secret(seed::COORDINATOR);
    if let Ok(incoming) = IncomingHello::read(&coordinator, data) {
        assert!(
            form.is_some(),
            "a Hello that hello_form does not know opened"
        );
        assert_eq!(incoming.request_len, data.len());
        assert_eq!(
            incoming.hello.session,
            u32_at(data, 4),
            "the session index outside must be the one inside"
        );
        let mut out = [0u8; MAX_DATAGRAM];
        match incoming.answer(7, &welcome(), &mut out) {
            Ok((n, session)) => {
                assert!(n <= data.len(), "welcome larger than the hello");
                assert!(session.is_some());
            }
            Err(ChannelError::Decode(DecodeError::TooLarge)) => {}
            Err(e) => panic!("answering an authenticated hello failed: {e}"),
        }
    }

    // Only a datagram claiming to be a Welcome or a cookie reply needs a real handshake start
    // (costly): skip it for the rest.
    match ControlHeader::parse(data).and_then(|h| h.kind) {
        Some(ControlKind::Welcome) => {
            let initiator = initiator(u32_at(data, 8), HelloForm::Macs);
            let answers = initiator.answers(data);
            match initiator.finish(data) {
                Ok((w, _)) => panic!("forged welcome accepted: {w:?}"),
                Err(ChannelError::Decode(e)) => panic!("a forged welcome authenticated: {e}"),
                Err(ChannelError::Unauthenticated) => {
                    assert!(answers, "finish got past the checks answers() refused")
                }
                Err(_) => assert!(
                    !answers,
                    "answers() accepted what finish refused before crypto"
                ),
            }
        }
        Some(ControlKind::CookieReply) => {
            let session = u32_at(data, 4);
            let mut initiator = initiator(session, HelloForm::Macs);
            let mac1 = initiator.mac1().expect("a Hello with MACs has mac1");
            let coordinator_key = public(seed::COORDINATOR);
            let opener = CookieOpener::for_coordinator(&coordinator_key);
            assert_eq!(
                opener.open(data, session, &mac1),
                None,
                "forged cookie reply opened"
            );

            // A genuine reply, made with a secret and nonce from the input.
            let mut s = [0u8; 32];
            let mut nonce = [0u8; 24];
            for (i, b) in data.iter().enumerate() {
                s[i % 32] ^= b;
                nonce[i % 24] = nonce[i % 24].wrapping_add(*b);
            }
            let maker = CookieMaker::new(&coordinator_key, s, 0);
            let src = addr(data.len());
            let reply = maker.reply(src, session, &mac1, nonce);
            let cookie = opener
                .open(&reply, session, &mac1)
                .expect("a genuine reply opens");
            assert_eq!(opener.open(&reply, session ^ 1, &mac1), None);
            let before = initiator.datagram().to_vec();
            initiator.apply_cookie(&cookie);
            let after = initiator.datagram();
            assert_eq!(after.len(), before.len());
            assert_eq!(after[..after.len() - 16], before[..before.len() - 16]);
            assert!(Mac1Key::for_coordinator(&coordinator_key).verify(after));
            assert!(
                maker.verify_mac2(src, after),
                "mac2 from the cookie refused"
            );
            assert!(
                !maker.verify_mac2(addr(data.len() + 1), after),
                "mac2 valid elsewhere"
            );
            assert!(
                !maker.verify_mac2(src, &before),
                "a Hello without mac2 passed"
            );
        }
        _ => {}
    }
});
