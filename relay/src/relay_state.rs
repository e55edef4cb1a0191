//! The whole relay as one sans-IO state machine: its control client (it registers with the
//! coordinator, which lists the members) and the forwarder. Datagrams and timeouts go in with
//! the time; datagrams and OS commands come out of queues. The daemon and the simulator drive
//! the same code.

use crate::daemon::Status;
use crate::forwarder::Forwarder;
use lanmesh_proto::client::{ClientConfig, ControlClient, Event, Trust};
use lanmesh_proto::header::{classify, PacketClass};
use lanmesh_proto::messages::Role;
use lanmesh_proto::outbox::{Outbox, Transmit};
use lanmesh_proto::relay::frame_kind;
use lanmesh_proto::stamp::WallClock;
use lanmesh_proto::PublicKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Quiet sessions are dropped (and the stamp floor renewed) this often.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(5);

pub struct RelayConfig {
    /// Its key, its coordinator and how to join (the role is always `Relay`).
    pub client: ClientConfig,
    /// Forwarding budget per member.
    pub bytes_per_sec: u64,
    /// Seeds every random choice (session indices, nonces).
    pub seed: u64,
}

/// Something only the operating system can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Keep the coordinator's key.
    PinCoordinator(PublicKey),
    /// Persist the stamp floor for this wall-clock time (ns since the Unix epoch).
    SaveStamps(u64),
    /// Stop: only the user can fix this.
    Stop(String),
}

pub struct RelayState {
    control: ControlClient,
    forwarder: Forwarder,
    out: Outbox,
    commands: VecDeque<Command>,
    clock: WallClock,
    public: PublicKey,
    trust: Trust,
    name: String,
    next_expiry: Instant,
}

impl RelayState {
    pub fn new(config: RelayConfig, now: Instant, wall_ns: u64) -> RelayState {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let secret = x25519_dalek::StaticSecret::from(config.client.private);
        let public = PublicKey::from(x25519_dalek::PublicKey::from(&secret));
        let (trust, name) = (config.client.trust, config.client.name.clone());
        let client = ClientConfig {
            role: Role::Relay,
            ..config.client
        };
        let mut control = ControlClient::new(client, rng.gen());
        control.start(now, wall_ns);
        let mut relay = RelayState {
            control,
            forwarder: Forwarder::new(secret, config.bytes_per_sec, rng.gen()),
            out: Outbox::default(),
            commands: VecDeque::new(),
            clock: WallClock::new(now, wall_ns),
            public,
            trust,
            name,
            next_expiry: now + EXPIRY_INTERVAL,
        };
        relay.after_input();
        relay
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The datagram in `buf[..len]` from `src` (the buffer is reused to build what is
    /// forwarded): control packets from the coordinator go to the control client, the rest to
    /// the forwarder.
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, buf: &mut [u8], len: usize) {
        let data = &buf[..len];
        let coordinator = self.control.coordinator_addr();
        if src == coordinator
            && classify(data) == PacketClass::Control
            && frame_kind(data).is_none()
        {
            let wall = self.clock.ns(now);
            self.control.handle_datagram(now, wall, src, data);
        } else {
            self.forwarder.handle_datagram(now, src, buf, len);
        }
        self.after_input();
    }

    pub fn poll_timeout(&self) -> Instant {
        self.control
            .poll_timeout()
            .map_or(self.next_expiry, |t| t.min(self.next_expiry))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let wall = self.clock.ns(now);
        if self.control.poll_timeout().is_some_and(|t| now >= t) {
            self.control.handle_timeout(now, wall);
        }
        if now >= self.next_expiry {
            self.next_expiry = now + EXPIRY_INTERVAL;
            self.forwarder.expire(now);
            self.commands.push_back(Command::SaveStamps(wall));
        }
        self.after_input();
    }

    /// The next datagram to send: forwarded frames first, then the control client's.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.forwarder
            .poll_transmit()
            .or_else(|| self.out.poll_transmit())
    }

    /// Gives a polled datagram's buffer back (to the forwarder's pool: the hot path).
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        self.forwarder.recycle(buffer)
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Says goodbye to the coordinator (the datagrams are queued).
    pub fn shutdown(&mut self) {
        self.control.shutdown();
        self.after_input();
    }

    /// `relay status`.
    pub fn status(&self, listen: SocketAddr) -> Status {
        let stats = self.forwarder.stats();
        Status {
            name: self.name.clone(),
            public_key: self.public.to_string(),
            listen: listen.to_string(),
            coordinator: self.control.coordinator_addr().to_string(),
            coordinator_connected: self.control.is_connected(),
            members: self.forwarder.members(),
            members_connected: self.forwarder.bound(),
            packets_forwarded: stats.packets_forwarded,
            bytes_forwarded: stats.bytes_forwarded,
            dropped: stats.dropped,
        }
    }

    fn after_input(&mut self) {
        while let Some(event) = self.control.poll_event() {
            self.handle_event(event);
        }
        while let Some(t) = self.control.poll_transmit() {
            self.out.send_udp(t.dst, &t.payload);
        }
    }

    fn handle_event(&mut self, event: Event) {
        let coordinator = self.control.coordinator_addr();
        match event {
            Event::Registered { name: given, .. } => {
                if let Trust::JoinKey(k) = self.trust {
                    self.commands.push_back(Command::PinCoordinator(k));
                }
                info!(name = %given, "registered with the coordinator; forwarding for its members");
                self.name = given;
            }
            Event::PeerMap(peers) => {
                let members = peers.iter().filter(|p| p.role == Role::Node);
                self.forwarder.set_members(members.map(|p| p.public_key));
                info!(members = self.forwarder.members(), "member list updated");
            }
            Event::Pin(key) => self.commands.push_back(Command::PinCoordinator(key)),
            Event::Unreachable { retry_in } => warn!(
                "coordinator {coordinator} is not answering; retrying in {}s (forwarding goes on)",
                retry_in.as_secs()
            ),
            Event::Lost => warn!(
                "lost contact with coordinator {coordinator}; reconnecting (forwarding goes on)"
            ),
            Event::Warning(message) => warn!("{message}"),
            // The coordinator refused the relay key the user gave: only the user can fix that.
            // Anything else is tried again later.
            Event::Rejected {
                reason,
                message,
                ever_registered: false,
                ..
            } if reason.is_about_the_key() => {
                let why = format!("the coordinator refused this relay: {message}");
                self.commands.push_back(Command::Stop(why));
            }
            Event::Rejected {
                message, retry_in, ..
            } => warn!(
                "the coordinator refused this relay: {message} (trying again in {}s; forwarding goes on)",
                retry_in.as_secs()
            ),
            Event::Removed { retry_in } => warn!(
                "an admin removed this relay at the coordinator: it forwards for nobody now (trying to register again in {}s)",
                retry_in.as_secs()
            ),
            Event::Renamed { name: given } => {
                info!(old = %self.name, new = %given, "an admin renamed this relay");
                self.name = given;
            }
            Event::Punch { .. } | Event::PublicEndpointChanged { .. } => {}
        }
    }
}
