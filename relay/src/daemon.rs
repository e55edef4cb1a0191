//! `relay serve`: the tokio driver around [`RelayState`]. It owns the UDP socket (for
//! forwarding and for the coordinator) and the local status socket, moves datagrams between
//! the socket and the core, sleeps until the core's next timeout and runs its OS commands.

use crate::relay_state::{Command, RelayConfig, RelayState};
use anyhow::{bail, Context};
use lanmesh_common::local_api;
use lanmesh_common::net::{coordinator_target, resolve};
use lanmesh_common::state_dir::StateDir;
use lanmesh_common::udp_batch::BatchSocket;
use lanmesh_common::unix_ns;
use lanmesh_proto::client::ClientConfig;
use lanmesh_proto::messages::Role;
use lanmesh_proto::JoinKey;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Instant;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::info;

/// `recvmmsg` calls (each up to 8 datagram trains) per turn of the loop at most.
const RECV_CALLS: usize = 8;

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

fn bind_socket(listen: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
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
    Ok(socket.into())
}

/// Sends what the core queued: datagrams for one member together (UDP GSO); a full socket
/// buffer drops them, like a full NIC queue would.
fn flush(relay: &mut RelayState, socket: &mut BatchSocket) {
    while let Some(t) = relay.poll_transmit() {
        socket.send(t.dst, &t.payload);
        relay.recycle(t.payload);
    }
    socket.flush();
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    opts.state.create()?;
    let private = opts.state.private_key()?;
    let mut socket = BatchSocket::new(bind_socket(opts.listen)?, true)
        .context("cannot set up the relay's UDP socket")?;
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
    let Some(trust) = opts.state.trust(opts.auth_key.as_ref())? else {
        bail!(
            "a relay needs a relay join key the first time: create one on the coordinator with \
             `coordinator keys create --relay` and pass it with --auth-key"
        );
    };
    let (stamp_floor, mut persisted_floor) = opts.state.start_stamps(unix_ns())?;
    let config = RelayConfig {
        client: ClientConfig {
            private,
            coordinator_addr: coordinator,
            trust,
            join: opts.auth_key.map(|k| k.secret),
            name: opts.name.clone(),
            role: Role::Relay,
            stamp_floor,
        },
        bytes_per_sec: opts.bytes_per_sec,
        seed: rand::random(),
    };
    let mut relay = RelayState::new(config, Instant::now(), unix_ns());
    info!(public = %relay.public_key(), listen = %opts.listen, %coordinator, "relay starting");
    let result = loop {
        flush(&mut relay, &mut socket);
        let mut stop = None;
        while let Some(command) = relay.poll_command() {
            match command {
                Command::PinCoordinator(key) => {
                    if opts.state.pinned_coordinator()? != Some(key) {
                        opts.state.pin_coordinator(&key)?;
                    }
                }
                Command::SaveStamps(wall_ns) => opts
                    .state
                    .renew_stamps(&mut persisted_floor, unix_ns().max(wall_ns)),
                Command::Stop(message) => stop = Some(message),
            }
        }
        if let Some(message) = stop {
            break Err(anyhow::anyhow!(message));
        }
        tokio::select! {
            // What else is waiting is read in the same turn (one timer registration per
            // batch, not per datagram); what it earns goes out at the top of the loop.
            r = socket.readable() => if r.is_ok() {
                let now = Instant::now();
                for _ in 0..RECV_CALLS {
                    let got = socket.try_recv(|src, d| {
                        let n = d.len();
                        relay.handle_datagram(now, src, d, n)
                    });
                    if got == 0 {
                        break;
                    }
                    flush(&mut relay, &mut socket); // Each read's datagrams leave before the next.
                }
            },
            _ = tokio::time::sleep_until(relay.poll_timeout().into()) => {
                relay.handle_timeout(Instant::now())
            }
            Some((Request::Status, reply)) = api_rx.recv() => {
                let _ = reply.send(relay.status(opts.listen));
            }
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
        }
    };
    relay.shutdown();
    while let Some(t) = relay.poll_transmit() {
        socket.send_now(t.dst, &t.payload);
    }
    let _ = std::fs::remove_file(opts.state.socket());
    info!("relay stopped");
    result
}
