//! `relay serve`: the tokio driver. It owns the UDP socket (for forwarding and for the
//! coordinator), the timers and the local status socket, and feeds the sans-IO
//! [`ControlClient`] and [`Forwarder`].

use crate::forwarder::Forwarder;
use anyhow::bail;
use lanmesh_common::local_api;
use lanmesh_common::net::{coordinator_target, resolve};
use lanmesh_common::state_dir::StateDir;
use lanmesh_common::{unix_ms, unix_ns};
use lanmesh_proto::client::{ClientConfig, ControlClient, Event, Trust};
use lanmesh_proto::header::{classify, PacketClass};
use lanmesh_proto::messages::Role;
use lanmesh_proto::relay::frame_kind;
use lanmesh_proto::{JoinKey, PublicKey};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub struct Options {
    pub listen: SocketAddr,
    pub coordinator: String,
    pub auth_key: Option<JoinKey>,
    pub name: String,
    pub state: StateDir,
    pub bytes_per_sec: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Status,
}

/// What `relay status --json` prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub public_key: String,
    pub listen: String,
    pub coordinator: String,
    pub coordinator_connected: bool,
    /// Members the coordinator listed.
    pub members: usize,
    /// Members bound to this relay now.
    pub members_connected: usize,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    /// Datagrams refused: non-members, forgeries, replays, over the rate limit, unknown
    /// destinations.
    pub dropped: u64,
}

fn bind_socket(listen: SocketAddr) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&listen.into()).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "UDP {listen} is already in use (another relay?): stop it or pick another --listen"
        ),
        std::io::ErrorKind::AddrNotAvailable => anyhow::anyhow!(
            "{} is not an address of this machine: pick one of its addresses with --listen",
            listen.ip()
        ),
        _ => anyhow::anyhow!("cannot listen on UDP {listen}: {e}"),
    })?;
    Ok(UdpSocket::from_std(socket.into())?)
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    opts.state.create()?;
    let private = opts.state.private_key()?;
    let secret = x25519_dalek::StaticSecret::from(private);
    let public = PublicKey::from(x25519_dalek::PublicKey::from(&secret));
    let socket = bind_socket(opts.listen)?;
    let listener = local_api::listen(&opts.state.socket(), "relay")?;
    let (api_tx, mut api_rx) = mpsc::channel::<local_api::Call<Request, Status>>(16);
    local_api::serve(listener, api_tx, |_| None);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let target = coordinator_target(&opts.coordinator);
    let coordinator = tokio::select! {
        a = resolve(&target) => a,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    };
    let trust = match (&opts.auth_key, opts.state.pinned_coordinator()?) {
        (Some(k), _) => Trust::JoinKey(k.coordinator),
        (None, Some(pinned)) => Trust::Pinned(pinned),
        (None, None) => bail!(
            "a relay needs a relay join key the first time: create one on the coordinator with \
             `coordinator keys create --relay` and pass it with --auth-key"
        ),
    };
    info!(%public, listen = %opts.listen, %coordinator, "relay starting");
    let (stamp_floor, mut persisted_floor) = opts.state.start_stamps(unix_ns())?;
    let mut control = ControlClient::new(
        ClientConfig {
            private,
            coordinator_addr: coordinator,
            trust,
            join: opts.auth_key.map(|k| k.secret),
            name: opts.name.clone(),
            role: Role::Relay,
            stamp_floor,
        },
        rand::random(),
    );
    control.start(Instant::now(), unix_ns());
    let mut forwarder = Forwarder::new(secret, opts.bytes_per_sec, rand::random());
    let mut name = opts.name.clone();
    let mut buf = vec![0u8; 65_536];
    let mut expiry = tokio::time::interval(Duration::from_secs(5));

    let result = loop {
        while let Some(t) = control.poll_transmit() {
            let _ = socket.send_to(&t.payload, t.dst).await;
        }
        let mut fatal = None;
        while let Some(event) = control.poll_event() {
            match event {
                Event::Registered { name: given, .. } => {
                    if let Trust::JoinKey(k) = trust {
                        if opts.state.pinned_coordinator()? != Some(k) {
                            opts.state.pin_coordinator(&k)?;
                        }
                    }
                    info!(name = %given, "registered with the coordinator; forwarding for its members");
                    name = given;
                }
                Event::PeerMap(peers) => {
                    forwarder.set_members(peers.iter().filter(|p| p.role == Role::Node).map(|p| p.public_key));
                    info!(members = forwarder.members(), "member list updated");
                }
                Event::Pin(key) => opts.state.pin_coordinator(&key)?,
                Event::Unreachable { retry_in } => warn!(
                    "coordinator {coordinator} is not answering; retrying in {}s (forwarding goes on)",
                    retry_in.as_secs()
                ),
                Event::Lost => warn!("lost contact with coordinator {coordinator}; reconnecting (forwarding goes on)"),
                Event::Warning(message) => warn!("{message}"),
                // The coordinator refused the relay key the user gave: only the user can fix
                // that. Anything else is tried again later.
                Event::Rejected { reason, message, ever_registered: false, .. } if reason.is_about_the_key() => {
                    fatal = Some(format!("the coordinator refused this relay: {message}"));
                }
                Event::Rejected { message, retry_in, .. } => warn!(
                    "the coordinator refused this relay: {message} (trying again in {}s; forwarding goes on)",
                    retry_in.as_secs()
                ),
                Event::Removed { retry_in } => {
                    warn!("an admin removed this relay at the coordinator: it forwards for nobody now (trying to register again in {}s)", retry_in.as_secs());
                }
                Event::Renamed { name: given } => {
                    info!(old = %name, new = %given, "an admin renamed this relay");
                    name = given;
                }
                Event::Punch { .. } | Event::PublicEndpointChanged { .. } => {}
            }
        }
        if let Some(message) = fatal {
            break Err(anyhow::anyhow!(message));
        }
        let wake = control
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, src)) = r else { continue };
                let data = &buf[..n];
                if src == coordinator && classify(data) == PacketClass::Control && frame_kind(data).is_none() {
                    control.handle_datagram(Instant::now(), unix_ns(), src, data);
                } else {
                    forwarder.handle_datagram(unix_ms(), src, &mut buf, n, &mut |dst, d| {
                        // A full socket buffer drops the datagram, like a full NIC queue would.
                        let _ = socket.try_send_to(d, dst);
                    });
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => control.handle_timeout(Instant::now(), unix_ns()),
            _ = expiry.tick() => {
                forwarder.expire(unix_ms());
                opts.state.renew_stamps(&mut persisted_floor, unix_ns());
            }
            Some((Request::Status, reply)) = api_rx.recv() => {
                let stats = forwarder.stats();
                let _ = reply.send(Status {
                    name: name.clone(),
                    public_key: public.to_string(),
                    listen: opts.listen.to_string(),
                    coordinator: coordinator.to_string(),
                    coordinator_connected: control.is_connected(),
                    members: forwarder.members(),
                    members_connected: forwarder.bound(),
                    packets_forwarded: stats.packets_forwarded,
                    bytes_forwarded: stats.bytes_forwarded,
                    dropped: stats.dropped,
                });
            }
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
        }
    };
    control.shutdown();
    while let Some(t) = control.poll_transmit() {
        let _ = socket.send_to(&t.payload, t.dst).await;
    }
    let _ = std::fs::remove_file(opts.state.socket());
    info!("relay stopped");
    result
}
