//! `node up`: the tokio driver around [`NodeState`]. It owns the UDP socket, the TUN device,
//! the local control socket and the name service; it moves bytes between them and the core,
//! sleeps until the core's next timeout, and runs the OS commands the core asks for.

use crate::api::{DataPathStatus, Request, Response};
use crate::lan::{igmp, LanConfig};
use crate::name_service::NameService;
use crate::names::Backend;
use crate::netconf::{self, Netlink};
use crate::node_state::{Command, NodeConfig, NodeState};
use crate::tun_batch::TunBatch;
use crate::wake_timer::WakeTimer;
use anyhow::{bail, Context};
use lanmesh_common::local_api;
use lanmesh_common::net::{coordinator_target, resolve};
use lanmesh_common::state_dir::StateDir;
use lanmesh_common::udp_batch::BatchSocket;
use lanmesh_common::unix_ns;
use lanmesh_proto::client::{ClientConfig, Trust};
use lanmesh_proto::messages::Role;
use lanmesh_proto::stamp::StampFloor;
use lanmesh_proto::JoinKey;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

pub struct UpOptions {
    pub coordinator: String,
    pub auth_key: Option<JoinKey>,
    pub name: String,
    pub state: StateDir,
    pub interface: String,
    pub port: u16,
    /// Extra STUN servers (HOST:PORT) to learn whether our NAT mapping varies by destination.
    pub stun: Vec<String>,
    pub keepalive_secs: u16,
    /// Broadcast and multicast between nodes (`--lan-broadcast`, limits).
    pub lan: LanConfig,
    /// How peer names get onto this machine (`--dns`).
    pub dns: Backend,
    /// TUN offload and UDP GSO/GRO (`--offload`).
    pub offload: bool,
}

type ApiCall = local_api::Call<Request, Response>;

/// `recvmmsg` calls (each up to 8 datagrams or GRO trains of them) per turn of the loop.
const RECV_CALLS: usize = 8;
/// TUN reads (each one packet, or a train of up to 64 KiB with offload) and packets per turn
/// of the loop at most.
const TUN_READS: usize = 64;
const TUN_PACKETS: usize = 256;

pub async fn run(opts: UpOptions) -> anyhow::Result<()> {
    if !netconf::has_net_admin() {
        bail!("node up needs root (or CAP_NET_ADMIN) to create its network interface: run it with sudo");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: load the tun module (sudo modprobe tun)");
    }
    opts.state.create()?;
    let private = opts.state.private_key()?;
    let net = Netlink::open()?;
    let mut udp = BatchSocket::new(bind_socket(opts.port)?, opts.offload)
        .context("cannot set up the node's UDP socket")?;
    let port = udp.local_addr()?.port();
    let listener = local_api::listen(&opts.state.socket(), "node")?;
    let (api_tx, mut api_rx) = mpsc::channel::<ApiCall>(16);
    // The daemon stops as soon as it reads a Down, so that answer goes out first.
    local_api::serve(listener, api_tx, |r| {
        matches!(r, Request::Down).then_some(Response::GoingDown)
    });
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let target = coordinator_target(&opts.coordinator);
    let coordinator = tokio::select! {
        a = resolve(&target) => a,
        _ = sigterm.recv() => return cleanup(&opts.state, None, None).await,
        _ = sigint.recv() => return cleanup(&opts.state, None, None).await,
    };
    let trust = opts
        .state
        .trust(opts.auth_key.as_ref())?
        .unwrap_or(Trust::FirstUse);
    let stun_servers = resolve_stun(&opts.stun, coordinator).await;
    let now = Instant::now();
    // Stamps (Hello timestamps, probe counters, relay binds) follow the wall clock but never
    // go back, not even across restarts: the floor is persisted in the state dir.
    let (stamp_floor, mut floor) = opts.state.start_stamps(unix_ns())?;
    let config = NodeConfig {
        client: ClientConfig {
            private,
            coordinator_addr: coordinator,
            trust,
            join: opts.auth_key.map(|k| k.secret),
            name: opts.name.clone(),
            role: Role::Node,
            stamp_floor,
        },
        keepalive_secs: opts.keepalive_secs,
        lan: opts.lan,
        stun_servers,
        seed: rand::random(),
    };
    let mut node = NodeState::new(config, now, unix_ns());
    info!(public = %node.public_key(), %coordinator, "node starting; registering with the coordinator");
    let mut os = Os {
        opts: &opts,
        port,
        tun: None,
        floor: &mut floor,
        names: NameService::start(opts.dns, &opts.interface),
        net,
    };
    let (mut calls, mut next_call) = (HashMap::<u64, oneshot::Sender<Response>>::new(), 0u64);
    let mut tun_io = TunBatch::default();
    let mut dns_buf = vec![0u8; 1500];
    // One timer, moved when the core's next timeout moves (not a new one per turn).
    let mut timer = WakeTimer::new().context("cannot create the node's timer")?;
    let result: anyhow::Result<()> = loop {
        flush_data(&mut node, &mut udp, &mut tun_io, os.tun.as_ref()).await;
        if let Err(e) = os.run_commands(&mut node).await {
            break Err(e);
        }
        while let Some((id, mut response)) = node.poll_reply() {
            os.fill_names(&mut response);
            if let Response::Status(status) = &mut response {
                status.data_path = data_path(&opts, &os, &tun_io, &udp);
            }
            if let Some(reply) = calls.remove(&id) {
                let _ = reply.send(response);
            }
        }
        if let Err(e) = timer.set(node.poll_timeout()) {
            break Err(anyhow::anyhow!("cannot set the node's timer: {e}"));
        }
        let tun_read = async {
            match &os.tun {
                Some(t) => tun_io.recv(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // What else is waiting is read in the same turn: one poll of the timers and one
            // timer registration per batch, not per packet.
            r = udp.readable() => if r.is_ok() {
                let now = Instant::now();
                for _ in 0..RECV_CALLS {
                    if udp.try_recv(|src, d| node.handle_datagram(now, src, d)) == 0 {
                        break;
                    }
                    // What these brought leaves before the next read: a lone packet (a ping)
                    // waits for nothing.
                    flush_data(&mut node, &mut udp, &mut tun_io, os.tun.as_ref()).await;
                }
            },
            r = tun_read => if let (Ok(n), Some(tun)) = (r, &os.tun) {
                read_tun_turn(&mut node, &mut udp, &mut tun_io, tun, n).await;
            },
            r = timer.wait() => match r {
                Ok(()) => node.handle_timeout(Instant::now()),
                Err(e) => break Err(anyhow::anyhow!("the node's timer failed: {e}")),
            },
            Some((request, reply)) = api_rx.recv() => {
                if matches!(request, Request::Down) {
                    drop(reply); // Already answered by the API task.
                    info!("`node down` asked this daemon to stop");
                    break Ok(());
                }
                next_call += 1;
                calls.insert(next_call, reply);
                node.handle_request(Instant::now(), next_call, request);
            },
            r = os.names.recv(&mut dns_buf) => if let Ok((n, src)) = r {
                os.names.answer(src, &dns_buf[..n]);
            },
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
        }
    };
    os.names.stop();
    node.shutdown();
    while let Some(t) = node.poll_transmit() {
        udp.send_now(t.dst, &t.payload);
    }
    cleanup(&opts.state, os.tun.take(), Some(&os.net)).await?;
    result
}

/// Sends what the core queued: datagrams for one destination together (UDP GSO), packets for
/// the TUN coalesced by flow.
async fn flush_data(
    node: &mut NodeState,
    udp: &mut BatchSocket,
    tun_io: &mut TunBatch,
    tun: Option<&tun_rs::AsyncDevice>,
) {
    while let Some(t) = node.poll_transmit() {
        udp.send(t.dst, &t.payload);
        node.recycle(t.payload);
    }
    udp.flush();
    while let Some(p) = node.poll_tun_write() {
        if tun_io.queue(&p) {
            tun_io.write(tun).await;
        }
        node.recycle(p);
    }
    tun_io.write(tun).await;
}

/// One turn's TUN reads, the first of which brought `n` packets. Without offload every read
/// brings one packet: read on until the queue is empty (or enough for one turn), then send
/// them all in one GSO train — but a lone packet (a ping, a keystroke) leaves at once.
async fn read_tun_turn(
    node: &mut NodeState,
    udp: &mut BatchSocket,
    tun_io: &mut TunBatch,
    tun: &tun_rs::AsyncDevice,
    mut n: usize,
) {
    let now = Instant::now();
    let mut packets = 0;
    for call in 1..=TUN_READS {
        for i in 0..n {
            node.handle_tun_packet(now, tun_io.packet(i));
        }
        packets += n;
        if call == 1 && n == 1 {
            flush_data(node, udp, tun_io, Some(tun)).await;
        }
        if call == TUN_READS || packets >= TUN_PACKETS {
            break; // Only read what this turn will handle.
        }
        match tun_io.try_recv(tun) {
            Ok(more) => n = more,
            Err(_) => break,
        }
    }
    flush_data(node, udp, tun_io, Some(tun)).await;
}

/// What the driver does for the core: the interface, names, the state dir.
struct Os<'a> {
    opts: &'a UpOptions,
    port: u16,
    tun: Option<tun_rs::AsyncDevice>,
    floor: &'a mut StampFloor,
    names: NameService,
    net: Netlink,
}

impl Os<'_> {
    async fn run_commands(&mut self, node: &mut NodeState) -> anyhow::Result<()> {
        let iface = &self.opts.interface;
        while let Some(command) = node.poll_command() {
            match command {
                Command::PinCoordinator(key) => {
                    if self.opts.state.pinned_coordinator()? != Some(key) {
                        self.opts.state.pin_coordinator(&key)?;
                    }
                }
                Command::CreateInterface(placement) => {
                    let device = netconf::create_tun(iface, self.opts.offload)?;
                    self.net.set_address(iface, None, &placement).await?;
                    self.net.install_routes(iface, &placement).await?;
                    info!(interface = %iface, "mesh interface up");
                    self.tun = Some(device);
                }
                Command::MoveInterface { old, new } => self.net.replace(iface, &old, &new).await?,
                Command::AttachNames { mesh_ip, domain } => {
                    self.names.attach(mesh_ip, &domain).await
                }
                Command::SetNames(table) => self.names.update(table),
                Command::ReadInterfaces => {
                    node.handle_interfaces(Instant::now(), local_endpoints(self.port, iface))
                }
                Command::ReadGroups => node.handle_groups(kernel_groups(iface)),
                Command::SaveStamps(wall_ns) => self
                    .opts
                    .state
                    .renew_stamps(self.floor, unix_ns().max(wall_ns)),
                Command::Stop(message) => bail!(message),
            }
        }
        Ok(())
    }

    /// Status answers say how names are served: only the driver knows.
    fn fill_names(&self, response: &mut Response) {
        if let Response::Status(status) = response {
            status.names = self.names.describe().to_string();
            for p in &mut status.peers {
                let ip = p.mesh_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
                p.dns_name = self.names.dns_name(&p.name, ip);
            }
        }
    }
}

/// What the driver knows of the data path: offload and how many packets each call moved.
fn data_path(opts: &UpOptions, os: &Os, tun: &TunBatch, udp: &BatchSocket) -> DataPathStatus {
    // The interface's own counters: every write is one packet to the kernel, however many
    // segments it coalesced.
    let writes = std::fs::read_to_string(format!(
        "/sys/class/net/{}/statistics/rx_packets",
        opts.interface
    ))
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0);
    DataPathStatus {
        tun_offload: os.tun.as_ref().is_some_and(|t| t.tcp_gso()),
        udp_gso: udp.uses_gso(),
        tun_reads: tun.counters.reads,
        tun_packets_in: tun.counters.packets_in,
        tun_writes: writes,
        tun_packets_out: tun.counters.packets_out,
        udp_sends: udp.counters.sends,
        udp_datagrams_out: udp.counters.datagrams_out,
        udp_receives: udp.counters.receives,
        udp_datagrams_in: udp.counters.datagrams_in,
    }
}

/// The extra STUN servers' addresses (the coordinator is asked anyway).
async fn resolve_stun(servers: &[String], coordinator: SocketAddr) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for server in servers {
        match tokio::net::lookup_host(coordinator_target(server)).await {
            Ok(mut addrs) => match addrs.find(SocketAddr::is_ipv4) {
                // The coordinator sees this socket through the same mapping anyway: asking it
                // again proves nothing about how the mapping varies.
                Some(a) if a == coordinator => {
                    info!("STUN server {server} is the coordinator; it is asked anyway")
                }
                Some(a) => out.push(a),
                None => warn!("STUN server {server} has no IPv4 address; not using it"),
            },
            Err(e) => warn!("cannot resolve STUN server {server}: {e}; not using it"),
        }
    }
    out
}

/// This machine's IPv4 interface addresses with our port: how peers on the same LAN reach us.
/// Loopback, link-local and the mesh interface itself are left out.
fn local_endpoints(port: u16, mesh_interface: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.name != mesh_interface)
        .filter_map(|i| match i.ip() {
            std::net::IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() => {
                Some(SocketAddr::from((v4, port)))
            }
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The groups programs joined on the mesh interface.
fn kernel_groups(iface: &str) -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/proc/net/igmp")
        .map(|text| igmp::parse_proc_igmp(&text, iface))
        .unwrap_or_default()
}

fn bind_socket(port: u16) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Our own packets must never be routed into the mesh interface (see netconf).
    socket
        .set_mark(netconf::FWMARK)
        .context("cannot mark the node's socket (needs CAP_NET_ADMIN): run with sudo")?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    socket.bind(&addr.into()).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "UDP port {port} is already in use (another node daemon?): stop it or pick another \
             port with --port"
        ),
        _ => anyhow::anyhow!("cannot bind UDP port {port}: {e}"),
    })?;
    Ok(socket.into())
}

async fn cleanup(
    state: &StateDir,
    tun: Option<tun_rs::AsyncDevice>,
    net: Option<&Netlink>,
) -> anyhow::Result<()> {
    if tun.is_some() {
        drop(tun); // Closing the TUN removes the interface and its routes.
        if let Some(net) = net {
            net.remove_rules().await;
        }
        info!("mesh interface removed");
    }
    let _ = std::fs::remove_file(state.socket());
    Ok(())
}
