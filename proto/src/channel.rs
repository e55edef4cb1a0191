//! The encrypted control channel between a node and the coordinator: Noise IK (the node knows
//! the coordinator's key in advance, from its join key or its pinned copy) followed by
//! datagram transport with explicit counters and a replay window.
//!
//! Datagrams:
//! - HelloMac:  header | node session u32 | Noise IK message 1 (payload: [`Hello`], padded)
//!   | mac1 | mac2 (see [`crate::cookie`]); the older form `Hello` has no MACs
//! - Welcome:   header | coordinator session u32 | node session u32 | Noise IK message 2
//! - Transport: header | receiver session u32 | counter u64 | ciphertext
//!
//! A Hello is replayable by design of IK's first message, so [`Hello::timestamp`] must grow;
//! the coordinator enforces that per node key (and keeps the high-water mark across restarts),
//! and it drops a Hello whose ephemeral key it saw recently before any Diffie-Hellman.

use crate::cookie::{self, Cookie, Mac16, Mac1Key, MACS_LEN};
use crate::header::{write_header, ControlHeader, ControlKind, HEADER_LEN, PROTOCOL_VERSION};
use crate::key::PublicKey;
use crate::messages::{self, DecodeError, Hello, Welcome, HELLO_PLAINTEXT, MAX_PLAINTEXT};
use crate::replay::ReplayWindow;
use snow::{Builder, HandshakeState, StatelessTransportState};

const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE: &[u8] = b"lanmesh control";
const TAG: usize = 16;
/// Bytes a transport datagram adds around its plaintext.
pub const TRANSPORT_OVERHEAD: usize = HEADER_LEN + 4 + 8 + TAG;
/// The largest control datagram either side sends.
pub const MAX_DATAGRAM: usize = MAX_PLAINTEXT + TRANSPORT_OVERHEAD;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    #[error("not a control packet of this kind or version")]
    WrongKind,
    #[error("truncated packet")]
    Truncated,
    #[error("packet failed authentication")]
    Unauthenticated,
    #[error("replayed packet")]
    Replayed,
    #[error("packet addressed to another session")]
    WrongSession,
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

fn params() -> snow::params::NoiseParams {
    PATTERN.parse().expect("valid noise pattern")
}

fn expect_kind(datagram: &[u8], kind: ControlKind, min_len: usize) -> Result<(), ChannelError> {
    match ControlHeader::parse(datagram) {
        Some(h) if h.version == PROTOCOL_VERSION && h.kind == Some(kind) => {}
        _ => return Err(ChannelError::WrongKind),
    }
    if datagram.len() < min_len {
        return Err(ChannelError::Truncated);
    }
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Noise IK message 1 with a [`Hello`] payload: 32 (ephemeral) + 48 (static) + payload + 16.
const NOISE_HELLO_LEN: usize = 32 + 48 + HELLO_PLAINTEXT + TAG;
/// Length of a Hello datagram with MACs.
pub const HELLO_MAC_LEN: usize = HEADER_LEN + 4 + NOISE_HELLO_LEN + MACS_LEN;
/// Length of a Hello datagram in the older form, without MACs.
pub const HELLO_LEGACY_LEN: usize = HEADER_LEN + 4 + NOISE_HELLO_LEN;

/// Which form a Hello datagram of this version takes, judged from its header and length only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloForm {
    /// With mac1 and mac2.
    Macs,
    /// The older form without MACs.
    Legacy,
}

/// The form of a Hello datagram, or `None` if it is not one (wrong kind, version or length).
pub fn hello_form(datagram: &[u8]) -> Option<HelloForm> {
    let h = ControlHeader::parse(datagram)?;
    if h.version != PROTOCOL_VERSION {
        return None;
    }
    match (h.kind?, datagram.len()) {
        (ControlKind::HelloMac, HELLO_MAC_LEN) => Some(HelloForm::Macs),
        (ControlKind::Hello, HELLO_LEGACY_LEN) => Some(HelloForm::Legacy),
        _ => None,
    }
}

/// The node session index a Hello datagram claims (unauthenticated).
pub fn hello_session(datagram: &[u8]) -> Option<u32> {
    hello_form(datagram)?;
    Some(u32_at(datagram, HEADER_LEN))
}

/// The ephemeral public key of a Hello (unauthenticated): an honest node never uses one twice,
/// so a repeat is a replay.
pub fn hello_ephemeral(datagram: &[u8]) -> Option<[u8; 32]> {
    hello_form(datagram)?;
    datagram[HEADER_LEN + 4..HEADER_LEN + 36].try_into().ok()
}

/// The node's side of a handshake in flight.
pub struct Initiator {
    hs: HandshakeState,
    session: u32,
    /// The Hello datagram as sent (its MACs are redone when a cookie arrives).
    datagram: Vec<u8>,
    mac1: Option<Mac16>,
}

impl Initiator {
    /// Starts a handshake towards `coordinator`. The Hello datagram (see
    /// [`Initiator::datagram`]) has MACs unless `form` is [`HelloForm::Legacy`], for
    /// coordinators older than them.
    pub fn start(
        local_private: &[u8; 32],
        coordinator: &PublicKey,
        hello: &Hello,
        form: HelloForm,
    ) -> Result<Initiator, ChannelError> {
        let mut out = [0u8; MAX_DATAGRAM];
        let mut hs = Builder::new(params())
            .local_private_key(local_private)
            .remote_public_key(coordinator.as_bytes())
            .prologue(PROLOGUE)
            .build_initiator()
            .map_err(|_| ChannelError::Unauthenticated)?;
        let mut plain = [0u8; HELLO_PLAINTEXT];
        let n = messages::encode(hello, &mut plain, HELLO_PLAINTEXT)?;
        if n != HELLO_PLAINTEXT {
            return Err(ChannelError::Decode(DecodeError::TooLarge));
        }
        let kind = match form {
            HelloForm::Macs => ControlKind::HelloMac,
            HelloForm::Legacy => ControlKind::Hello,
        };
        let mut at = write_header(kind, &mut out);
        out[at..at + 4].copy_from_slice(&hello.session.to_le_bytes());
        at += 4;
        let len = hs
            .write_message(&plain[..n], &mut out[at..])
            .map_err(|_| ChannelError::Truncated)?;
        at += len;
        let mac1 = match form {
            HelloForm::Macs => {
                at += MACS_LEN;
                Mac1Key::for_coordinator(coordinator).write(&mut out[..at])
            }
            HelloForm::Legacy => None,
        };
        Ok(Initiator {
            hs,
            session: hello.session,
            datagram: out[..at].to_vec(),
            mac1,
        })
    }

    pub fn session(&self) -> u32 {
        self.session
    }

    /// The Hello datagram to send.
    pub fn datagram(&self) -> &[u8] {
        &self.datagram
    }

    /// The Hello's mac1 (`None` for the legacy form): what a cookie reply is bound to.
    pub fn mac1(&self) -> Option<Mac16> {
        self.mac1
    }

    /// Puts mac2 made with `cookie` on the Hello (to send it again).
    pub fn apply_cookie(&mut self, cookie: &Cookie) {
        if self.mac1.is_some() {
            cookie::write_mac2(cookie, &mut self.datagram);
        }
    }

    /// Whether `datagram` claims to be the Welcome for this handshake (a cheap check before
    /// [`Initiator::finish`], which spends the handshake state).
    pub fn answers(&self, datagram: &[u8]) -> bool {
        expect_kind(datagram, ControlKind::Welcome, HEADER_LEN + 8 + 32 + TAG).is_ok()
            && u32_at(datagram, HEADER_LEN + 4) == self.session
    }

    /// Reads the coordinator's Welcome. An accepted welcome yields the session; a rejection
    /// yields no session (the rejection is still authenticated).
    pub fn finish(mut self, datagram: &[u8]) -> Result<(Welcome, Option<Session>), ChannelError> {
        expect_kind(datagram, ControlKind::Welcome, HEADER_LEN + 8 + 32 + TAG)?;
        let coordinator_session = u32_at(datagram, HEADER_LEN);
        if u32_at(datagram, HEADER_LEN + 4) != self.session {
            return Err(ChannelError::WrongSession);
        }
        let mut plain = [0u8; MAX_PLAINTEXT];
        let n = self
            .hs
            .read_message(&datagram[HEADER_LEN + 8..], &mut plain)
            .map_err(|_| ChannelError::Unauthenticated)?;
        let welcome: Welcome = messages::decode(&plain[..n])?;
        let session = match welcome {
            Welcome::Accepted { .. } => Some(Session::new(self.hs, coordinator_session)?),
            Welcome::Rejected { .. } => None,
        };
        Ok((welcome, session))
    }
}

/// A Hello the coordinator has authenticated, waiting for its answer.
pub struct IncomingHello {
    hs: HandshakeState,
    pub remote: PublicKey,
    pub hello: Hello,
    /// Length of the Hello datagram: the Welcome may not be longer.
    pub request_len: usize,
}

impl IncomingHello {
    /// Authenticates and decodes a Hello datagram (either form) addressed to `local_private`.
    /// Its MACs are not checked here: that is the cheap gate in front of this.
    pub fn read(local_private: &[u8; 32], datagram: &[u8]) -> Result<IncomingHello, ChannelError> {
        let noise = match hello_form(datagram).ok_or(ChannelError::WrongKind)? {
            HelloForm::Macs => &datagram[HEADER_LEN + 4..datagram.len() - MACS_LEN],
            HelloForm::Legacy => &datagram[HEADER_LEN + 4..],
        };
        let mut hs = Builder::new(params())
            .local_private_key(local_private)
            .prologue(PROLOGUE)
            .build_responder()
            .map_err(|_| ChannelError::Unauthenticated)?;
        let mut plain = [0u8; MAX_PLAINTEXT];
        let n = hs
            .read_message(noise, &mut plain)
            .map_err(|_| ChannelError::Unauthenticated)?;
        let hello: Hello = messages::decode(&plain[..n])?;
        if hello.session != u32_at(datagram, HEADER_LEN) {
            return Err(ChannelError::WrongSession);
        }
        let mut remote = [0u8; 32];
        remote.copy_from_slice(
            hs.get_remote_static()
                .ok_or(ChannelError::Unauthenticated)?,
        );
        Ok(IncomingHello {
            hs,
            remote: PublicKey(remote),
            hello,
            request_len: datagram.len(),
        })
    }

    /// Writes the Welcome datagram into `out` and returns its length and, if accepted, the
    /// session (whose local index is `my_session`). Fails rather than answer with more bytes
    /// than the Hello had.
    pub fn answer(
        mut self,
        my_session: u32,
        welcome: &Welcome,
        out: &mut [u8],
    ) -> Result<(usize, Option<Session>), ChannelError> {
        let mut plain = [0u8; MAX_PLAINTEXT];
        let n = messages::encode(welcome, &mut plain, 0)?;
        let mut at = write_header(ControlKind::Welcome, out);
        out[at..at + 4].copy_from_slice(&my_session.to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&self.hello.session.to_le_bytes());
        at += 8;
        let len = self
            .hs
            .write_message(&plain[..n], &mut out[at..])
            .map_err(|_| ChannelError::Truncated)?;
        if at + len > self.request_len {
            return Err(ChannelError::Decode(DecodeError::TooLarge));
        }
        let session = match welcome {
            Welcome::Accepted { .. } => Some(Session::new(self.hs, self.hello.session)?),
            Welcome::Rejected { .. } => None,
        };
        Ok((at + len, session))
    }
}

/// An established channel: seals and opens transport datagrams.
pub struct Session {
    transport: StatelessTransportState,
    /// The other side's session index, written on every datagram we send.
    remote_index: u32,
    next_counter: u64,
    replay: ReplayWindow,
}

impl Session {
    fn new(hs: HandshakeState, remote_index: u32) -> Result<Session, ChannelError> {
        Ok(Session {
            transport: hs
                .into_stateless_transport_mode()
                .map_err(|_| ChannelError::Unauthenticated)?,
            remote_index,
            next_counter: 0,
            replay: ReplayWindow::default(),
        })
    }

    /// Seals `plaintext` (at most [`MAX_PLAINTEXT`] bytes) into a transport datagram in `out`.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, ChannelError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(ChannelError::Decode(DecodeError::TooLarge));
        }
        let counter = self.next_counter;
        self.next_counter += 1;
        let mut at = write_header(ControlKind::Transport, out);
        out[at..at + 4].copy_from_slice(&self.remote_index.to_le_bytes());
        out[at + 4..at + 12].copy_from_slice(&counter.to_le_bytes());
        at += 12;
        let len = self
            .transport
            .write_message(counter, plaintext, &mut out[at..])
            .map_err(|_| ChannelError::Truncated)?;
        Ok(at + len)
    }

    /// Opens a transport datagram (already matched to this session by
    /// [`transport_receiver`]) into `out`, returning the plaintext.
    pub fn open<'a>(
        &mut self,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Result<&'a [u8], ChannelError> {
        expect_kind(datagram, ControlKind::Transport, TRANSPORT_OVERHEAD)?;
        if datagram.len() > MAX_DATAGRAM {
            return Err(ChannelError::Truncated);
        }
        let counter = u64::from_le_bytes(
            datagram[HEADER_LEN + 4..HEADER_LEN + 12]
                .try_into()
                .expect("8 bytes"),
        );
        if !self.replay.check(counter) {
            return Err(ChannelError::Replayed);
        }
        let n = self
            .transport
            .read_message(counter, &datagram[HEADER_LEN + 12..], out)
            .map_err(|_| ChannelError::Unauthenticated)?;
        self.replay.accept(counter);
        Ok(&out[..n])
    }
}

/// The receiver session index of a transport datagram of this version, if it is one.
pub fn transport_receiver(datagram: &[u8]) -> Option<u32> {
    expect_kind(datagram, ControlKind::Transport, TRANSPORT_OVERHEAD).ok()?;
    Some(u32_at(datagram, HEADER_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{RejectReason, ToCoordinator};
    use x25519_dalek::StaticSecret;

    fn keypair(seed: u8) -> ([u8; 32], PublicKey) {
        let secret = StaticSecret::from([seed; 32]);
        let public = x25519_dalek::PublicKey::from(&secret);
        (secret.to_bytes(), public.into())
    }

    fn hello() -> Hello {
        Hello {
            timestamp: 1,
            session: 42,
            name: "a".into(),
            join: None,
            local_endpoints: vec![],
            role: crate::messages::Role::Node,
            capabilities: crate::messages::caps::ALL,
        }
    }

    fn accepted() -> Welcome {
        Welcome::Accepted {
            name: "a".into(),
            mesh: Some(crate::messages::MeshAddress {
                ip: "100.64.0.1".parse().unwrap(),
                network: "100.64.0.0/10".parse().unwrap(),
            }),
            heartbeat_secs: 5,
            map_version: 1,
            endpoint: "203.0.113.1:5".parse().unwrap(),
            stun_port: None,
            capabilities: crate::messages::caps::ALL,
            policy: 0,
            domain: String::new(),
        }
    }

    fn establish() -> (Session, Session) {
        let (node_sk, node_pk) = keypair(1);
        let (coord_sk, coord_pk) = keypair(2);
        let init = Initiator::start(&node_sk, &coord_pk, &hello(), HelloForm::Macs).unwrap();
        let n = init.datagram().len();
        assert_eq!(n, HELLO_MAC_LEN);
        assert_eq!(hello_form(init.datagram()), Some(HelloForm::Macs));
        assert!(Mac1Key::for_coordinator(&coord_pk).verify(init.datagram()));
        let incoming = IncomingHello::read(&coord_sk, init.datagram()).unwrap();
        assert_eq!(incoming.remote, node_pk);
        assert_eq!(incoming.hello, hello());
        let mut out = [0u8; MAX_DATAGRAM];
        let (m, coord_session) = incoming.answer(7, &accepted(), &mut out).unwrap();
        assert!(m <= n, "the welcome must not be larger than the hello");
        let (welcome, node_session) = init.finish(&out[..m]).unwrap();
        assert_eq!(welcome, accepted());
        (node_session.unwrap(), coord_session.unwrap())
    }

    #[test]
    fn handshake_and_transport_both_ways() {
        let (mut node, mut coord) = establish();
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut plain = [0u8; MAX_DATAGRAM];
        let n = node.seal(b"ping", &mut buf).unwrap();
        assert_eq!(transport_receiver(&buf[..n]), Some(7));
        assert_eq!(coord.open(&buf[..n], &mut plain).unwrap(), b"ping");
        // A replay is refused.
        assert_eq!(
            coord.open(&buf[..n], &mut plain),
            Err(ChannelError::Replayed)
        );
        let n = coord.seal(b"pong", &mut buf).unwrap();
        assert_eq!(transport_receiver(&buf[..n]), Some(42));
        assert_eq!(node.open(&buf[..n], &mut plain).unwrap(), b"pong");
    }

    #[test]
    fn tampering_is_detected_without_burning_the_counter() {
        let (mut node, mut coord) = establish();
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut plain = [0u8; MAX_DATAGRAM];
        let n = node.seal(b"hello", &mut buf).unwrap();
        let mut bad = buf;
        bad[n - 1] ^= 1;
        assert_eq!(
            coord.open(&bad[..n], &mut plain),
            Err(ChannelError::Unauthenticated)
        );
        assert_eq!(coord.open(&buf[..n], &mut plain).unwrap(), b"hello");
    }

    #[test]
    fn hello_to_the_wrong_coordinator_fails() {
        let (node_sk, _) = keypair(1);
        let (_, coord_pk) = keypair(2);
        let (other_sk, _) = keypair(3);
        let init = Initiator::start(&node_sk, &coord_pk, &hello(), HelloForm::Macs).unwrap();
        assert!(matches!(
            IncomingHello::read(&other_sk, init.datagram()),
            Err(ChannelError::Unauthenticated)
        ));
    }

    #[test]
    fn the_legacy_form_still_works_and_a_cookie_makes_mac2() {
        let (node_sk, node_pk) = keypair(1);
        let (coord_sk, coord_pk) = keypair(2);
        let init = Initiator::start(&node_sk, &coord_pk, &hello(), HelloForm::Legacy).unwrap();
        assert_eq!(init.datagram().len(), HELLO_LEGACY_LEN);
        assert_eq!(init.mac1(), None);
        assert_eq!(hello_session(init.datagram()), Some(42));
        let incoming = IncomingHello::read(&coord_sk, init.datagram()).unwrap();
        assert_eq!(incoming.remote, node_pk);

        let mut init = Initiator::start(&node_sk, &coord_pk, &hello(), HelloForm::Macs).unwrap();
        let before = init.datagram().to_vec();
        let maker = cookie::CookieMaker::new(&coord_pk, [3; 32], 0);
        let src: std::net::SocketAddr = "198.51.100.1:41641".parse().unwrap();
        let reply = maker.reply(src, 42, &init.mac1().unwrap(), [0; 24]);
        let c = cookie::CookieOpener::for_coordinator(&coord_pk)
            .open(&reply, 42, &init.mac1().unwrap())
            .unwrap();
        init.apply_cookie(&c);
        assert_eq!(
            init.datagram()[..before.len() - 16],
            before[..before.len() - 16]
        );
        assert!(maker.verify_mac2(src, init.datagram()));
        assert!(Mac1Key::for_coordinator(&coord_pk).verify(init.datagram()));
        assert_eq!(hello_ephemeral(init.datagram()), hello_ephemeral(&before));
        // Not a hello: wrong length or kind.
        assert_eq!(hello_form(&before[..before.len() - 1]), None);
        assert_eq!(hello_form(&reply), None);
    }

    #[test]
    fn rejection_is_authenticated_and_carries_no_session() {
        let (node_sk, _) = keypair(1);
        let (coord_sk, coord_pk) = keypair(2);
        let init = Initiator::start(&node_sk, &coord_pk, &hello(), HelloForm::Macs).unwrap();
        let n = init.datagram().len();
        let incoming = IncomingHello::read(&coord_sk, init.datagram()).unwrap();
        let reject = Welcome::Rejected {
            reason: RejectReason::KeyUsed,
            message: "x".repeat(200),
        };
        let mut out = [0u8; MAX_DATAGRAM];
        let (m, session) = incoming.answer(7, &reject, &mut out).unwrap();
        assert!(session.is_none());
        assert!(m <= n);
        let (welcome, session) = init.finish(&out[..m]).unwrap();
        assert_eq!(welcome, reject);
        assert!(session.is_none());
    }

    #[test]
    fn garbage_never_panics() {
        let (coord_sk, _) = keypair(2);
        let (mut node, _) = establish();
        let mut plain = [0u8; MAX_DATAGRAM];
        let mut buf = [0u8; MAX_DATAGRAM];
        let m = messages::encode(&ToCoordinator::Goodbye, &mut plain, 0).unwrap();
        let n = node.seal(&plain[..m], &mut buf).unwrap();
        for len in 0..n + 4 {
            let mut d = buf[..len.min(n)].to_vec();
            for byte in 0..d.len() {
                d[byte] ^= 0xa5;
                let _ = IncomingHello::read(&coord_sk, &d);
                let _ = transport_receiver(&d);
                let _ = node.open(&d, &mut plain);
                d[byte] ^= 0xa5;
            }
        }
    }
}
