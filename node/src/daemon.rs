//! `node up`: the tokio driver. It owns the UDP socket, the TUN device, the timers and the
//! local control socket, and feeds them to the sans-IO [`ControlClient`] and [`Mesh`].

use crate::api::{
    LanBroadcastStatus, Netcheck, PeerStatus, PingResult, RelayStatus, Request, Response, SeenBy,
    Status,
};
use crate::demux::{route, Route};
use crate::lan::{igmp, LanConfig};
use crate::mesh::{Io, Mesh, MeshConfig, Via, SCRATCH_LEN};
use crate::name_service::NameService;
use crate::names::{Backend, NameTable};
use crate::netconf::{self, MeshPlacement};
use crate::relays::RelayInfo;
use crate::stun_client::StunClient;
use anyhow::{bail, Context};
use lanmesh_common::local_api;
use lanmesh_common::net::{coordinator_target, resolve};
use lanmesh_common::state_dir::StateDir;
use lanmesh_common::unix_ns;
use lanmesh_proto::client::{ClientConfig, ControlClient, Event, Trust};
use lanmesh_proto::messages::{MeshAddress, Role};
use lanmesh_proto::stamp::WallClock;
use lanmesh_proto::{JoinKey, PublicKey};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
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
}

/// Interface endpoints are re-read this often (addresses change when networks do).
const LOCAL_ENDPOINTS_INTERVAL: Duration = Duration::from_secs(10);

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

/// The kernel's multicast groups on the mesh interface are read this often (and at once when
/// it reports a change into the TUN).
const GROUPS_INTERVAL: Duration = Duration::from_secs(1);

/// What the node has been told about itself, and how the interface is set up for it.
struct Identity {
    name: String,
    placement: MeshPlacement,
    /// The DNS domain of peer names.
    domain: String,
}

/// Every name of the mesh (this node's too) and its mesh IP.
fn name_table(identity: &Option<Identity>, mesh: &Mesh) -> NameTable {
    let Some(me) = identity else {
        return NameTable::default();
    };
    let peers = mesh.peers(Instant::now());
    let entries = std::iter::once((me.name.as_str(), me.placement.mesh_ip))
        .chain(peers.iter().map(|p| (p.info.name.as_str(), p.info.mesh_ip)));
    NameTable::new(&me.domain, entries)
}

/// The groups programs joined on the mesh interface.
fn kernel_groups(iface: &str) -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/proc/net/igmp")
        .map(|text| igmp::parse_proc_igmp(&text, iface))
        .unwrap_or_default()
}

type ApiCall = local_api::Call<Request, Response>;

struct SocketIo<'a> {
    udp: &'a UdpSocket,
    tun: Option<&'a tun_rs::AsyncDevice>,
}

impl Io for SocketIo<'_> {
    fn send_udp(&mut self, dst: SocketAddr, datagram: &[u8]) {
        // A full socket buffer drops the datagram, like a full NIC queue would.
        let _ = self.udp.try_send_to(datagram, dst);
    }

    fn write_tun(&mut self, packet: &[u8]) {
        if let Some(tun) = self.tun {
            let _ = tun.try_send(packet);
        }
    }
}

fn bind_socket(port: u16) -> anyhow::Result<UdpSocket> {
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
    Ok(UdpSocket::from_std(socket.into())?)
}

pub async fn run(opts: UpOptions) -> anyhow::Result<()> {
    if !netconf::has_net_admin() {
        bail!("node up needs root (or CAP_NET_ADMIN) to create its network interface: run it with sudo");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: load the tun module (sudo modprobe tun)");
    }
    opts.state.create()?;
    let private = opts.state.private_key()?;
    let secret = x25519_dalek::StaticSecret::from(private);
    let public = PublicKey::from(x25519_dalek::PublicKey::from(&secret));
    let udp = bind_socket(opts.port)?;
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
        _ = sigterm.recv() => return cleanup(&opts.state, None),
        _ = sigint.recv() => return cleanup(&opts.state, None),
    };
    let trust = match (&opts.auth_key, opts.state.pinned_coordinator()?) {
        (Some(k), _) => Trust::JoinKey(k.coordinator),
        (None, Some(pinned)) => Trust::Pinned(pinned),
        (None, None) => Trust::FirstUse,
    };
    info!(%public, %coordinator, "node starting; registering with the coordinator");
    let epoch = Instant::now();
    // Stamps (Hello timestamps, probe counters, relay binds) follow the wall clock but never
    // go back, not even across restarts: the floor is persisted in the state dir.
    let clock = WallClock::new(epoch, unix_ns());
    let (stamp_floor, mut persisted_floor) = opts.state.start_stamps(clock.ns(epoch))?;
    let mut control = ControlClient::new(
        ClientConfig {
            private,
            coordinator_addr: coordinator,
            trust,
            join: opts.auth_key.map(|k| k.secret),
            name: opts.name.clone(),
            role: Role::Node,
            stamp_floor,
        },
        rand::random(),
    );
    let port = udp.local_addr()?.port();
    control.set_local_endpoints(epoch, local_endpoints(port, &opts.interface));
    control.start(epoch, clock.ns(epoch));
    let mesh_config = MeshConfig {
        keepalive_secs: opts.keepalive_secs,
        stamp_floor,
        wall_ns: clock.ns(epoch),
        seed: rand::random(),
        lan: opts.lan,
    };
    let mut mesh = Mesh::new(secret, mesh_config, epoch);
    let mut stun_servers = Vec::new();
    for server in &opts.stun {
        match tokio::net::lookup_host(coordinator_target(server)).await {
            Ok(mut addrs) => match addrs.find(SocketAddr::is_ipv4) {
                // The coordinator sees this socket through the same mapping anyway: asking it
                // again proves nothing about how the mapping varies.
                Some(a) if a == coordinator => {
                    info!("STUN server {server} is the coordinator; it is asked anyway")
                }
                Some(a) => stun_servers.push(a),
                None => warn!("STUN server {server} has no IPv4 address; not using it"),
            },
            Err(e) => warn!("cannot resolve STUN server {server}: {e}; not using it"),
        }
    }
    let mut stun = StunClient::new(stun_servers.clone(), epoch, rand::random());
    let mut reported_varies = None;
    let mut next_local_scan = epoch + LOCAL_ENDPOINTS_INTERVAL;
    let mut next_groups_read = epoch;
    let mut punch_requests: Vec<PublicKey> = Vec::new();
    let mut pings: Vec<PendingPing> = Vec::new();
    let mut netchecks: Vec<(oneshot::Sender<Response>, Instant)> = Vec::new();
    let mut identity: Option<Identity> = None;
    let mut tun: Option<tun_rs::AsyncDevice> = None;
    let mut names = NameService::start(opts.dns, &opts.interface);
    let mut dns_buf = vec![0u8; 1500];

    let mut rx_buf = vec![0u8; SCRATCH_LEN];
    let mut tun_buf = vec![0u8; SCRATCH_LEN];
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let result: anyhow::Result<()> = loop {
        for peer in punch_requests.drain(..) {
            control.request_punch(peer);
        }
        while let Some(t) = control.poll_transmit() {
            let _ = udp.send_to(&t.payload, t.dst).await;
        }
        let mut fatal = None;
        while let Some(event) = control.poll_event() {
            let mut io = SocketIo {
                udp: &udp,
                tun: tun.as_ref(),
            };
            match event {
                Event::Pin(key) => {
                    info!(coordinator_key = %key, "pinned the coordinator's key on first use");
                    opts.state.pin_coordinator(&key)?;
                }
                Event::Registered {
                    name,
                    mesh: address,
                    endpoint,
                    coordinator_stun,
                    policy,
                    domain,
                } => {
                    if let Some(addr) = coordinator_stun {
                        if !stun_servers.contains(&addr) {
                            stun_servers.push(addr);
                            let mut servers = stun_servers.clone();
                            servers.extend(mesh.relay_addrs());
                            stun.set_servers(servers);
                            stun.refresh(Instant::now());
                        }
                    }
                    let Some(MeshAddress { ip: mesh_ip, network }) = address else {
                        // The control client checks this; a relay key is the only way here.
                        fatal = Some("the coordinator registered this node as a relay: use a node key, or another --state-dir".into());
                        continue;
                    };
                    mesh.set_identity(mesh_ip, network);
                    mesh.set_network_policy(policy);
                    if opts.lan.enabled && !mesh.lan_allowed() {
                        info!("the coordinator switched broadcast and multicast off for this network");
                    }
                    let placement = MeshPlacement { mesh_ip, network, lan: mesh.lan_active() };
                    if let Trust::JoinKey(k) = trust {
                        if opts.state.pinned_coordinator()? != Some(k) {
                            opts.state.pin_coordinator(&k)?;
                        }
                    }
                    match &identity {
                        None => {
                            info!(%name, %mesh_ip, %network, public_endpoint = %endpoint, lan_broadcast = placement.lan, %domain, "registered");
                            let device = netconf::create_tun(&opts.interface)?;
                            netconf::set_address(&opts.interface, None, &placement)?;
                            netconf::install_routes(&opts.interface, &placement)?;
                            info!(interface = %opts.interface, "mesh interface up");
                            tun = Some(device);
                        }
                        Some(old) => {
                            info!(%name, %mesh_ip, "reconnected to the coordinator");
                            let was = old.placement;
                            if was.mesh_ip != mesh_ip || was.network != network {
                                warn!(old = %was.mesh_ip, new = %mesh_ip, "the coordinator gave this node a new mesh IP");
                            }
                            if was != placement {
                                netconf::replace(&opts.interface, &was, &placement)?;
                            }
                        }
                    }
                    names.attach(mesh_ip, &domain).await;
                    identity = Some(Identity {
                        name,
                        placement,
                        domain,
                    });
                    names.update(name_table(&identity, &mesh));
                }
                Event::PeerMap(map) => {
                    let (relays, peers): (Vec<_>, Vec<_>) =
                        map.into_iter().partition(|p| p.role == Role::Relay);
                    let relays = relays
                        .into_iter()
                        .filter(|r| r.online)
                        .filter_map(|r| {
                            Some(RelayInfo {
                                addr: r.candidates.public?,
                                name: r.name,
                                key: r.public_key,
                            })
                        })
                        .collect();
                    mesh.set_relays(Instant::now(), relays);
                    // Relays answer STUN: with the coordinator they are the two destinations
                    // that tell whether our NAT mapping varies by destination.
                    let mut servers = stun_servers.clone();
                    servers.extend(mesh.relay_addrs());
                    stun.set_servers(servers);
                    mesh.apply_peer_map(Instant::now(), peers);
                    names.update(name_table(&identity, &mesh));
                }
                Event::Punch { peer, candidates } => {
                    mesh.punch(Instant::now(), &peer, &candidates, &mut scratch, &mut io)
                }
                Event::PublicEndpointChanged { old, new } => {
                    info!(%old, %new, "our public endpoint changed (NAT mapping or network changed); probing peers again");
                    mesh.network_changed(Instant::now());
                }
                Event::Unreachable { retry_in } => warn!(
                    "coordinator {coordinator} is not answering; retrying in {}s{}",
                    retry_in.as_secs(),
                    if tun.is_some() { " (existing tunnels keep working)" } else { "" }
                ),
                Event::Lost => warn!(
                    "lost contact with coordinator {coordinator}; reconnecting (existing tunnels keep working)"
                ),
                Event::Warning(message) => warn!("{message}"),
                Event::Renamed { name } => {
                    if let Some(me) = identity.as_mut() {
                        info!(old = %me.name, new = %name, "an admin renamed this node");
                        me.name = name;
                    }
                    names.update(name_table(&identity, &mesh));
                }
                // The coordinator refused the join key the user gave, and this node was never
                // admitted: only the user can fix that. Anything else is tried again later
                // (tunnels keep working meanwhile).
                Event::Rejected { reason, message, ever_registered: false, .. } if reason.is_about_the_key() => {
                    fatal = Some(format!("the coordinator refused this node: {message}"));
                }
                Event::Rejected { message, retry_in, .. } => warn!(
                    "the coordinator refused this node: {message} (trying again in {}s)",
                    retry_in.as_secs()
                ),
                Event::Removed { retry_in } => warn!(
                    "an admin removed this node from the mesh: join again with a new --auth-key \
                     (its peers are gone; trying to register again in {}s)",
                    retry_in.as_secs()
                ),
            }
        }
        if let Some(message) = fatal {
            break Err(anyhow::anyhow!(message));
        }
        let varies = stun.mapping_varies(control.public_endpoint());
        if varies != reported_varies && varies.is_some() {
            reported_varies = varies;
            if varies == Some(true) {
                warn!("our NAT maps each destination to a different public port (symmetric NAT): direct paths to peers behind port-restricted or symmetric NATs will not work");
            } else {
                info!("our NAT keeps one public endpoint for all destinations (punchable)");
            }
        }
        answer_pings(&mut pings, &mut mesh);
        answer_netchecks(&mut netchecks, &stun, &control, &mesh);
        let wake = [
            control.poll_timeout(),
            mesh.poll_timeout(),
            stun.poll_timeout(),
        ]
        .into_iter()
        .chain(pings.iter().map(|p| Some(p.deadline)))
        .chain(netchecks.iter().map(|n| Some(n.1)))
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let tun_ref = tun.as_ref();
        let tun_read = async {
            match tun_ref {
                Some(t) => t.recv(&mut tun_buf).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = udp.recv_from(&mut rx_buf) => {
                let now = Instant::now();
                if let Ok((n, src)) = r {
                    let datagram = &rx_buf[..n];
                    let mut io = SocketIo { udp: &udp, tun: tun.as_ref() };
                    match route(datagram) {
                        Route::WireGuard => {
                            mesh.handle_datagram(now, src, datagram, &mut scratch, &mut io);
                        }
                        Route::Probe => {
                            mesh.handle_probe(now, src, datagram, &mut scratch, &mut io);
                        }
                        Route::Relay => {
                            mesh.handle_relay_frame(now, src, datagram, &mut scratch, &mut io);
                        }
                        Route::Control => control.handle_datagram(now, clock.ns(now), src, datagram),
                        Route::Stun => stun.handle_datagram(src, datagram),
                        Route::Drop => {}
                    }
                }
            }
            r = tun_read => {
                if let Ok(n) = r {
                    let now = Instant::now();
                    let mut io = SocketIo { udp: &udp, tun: tun.as_ref() };
                    mesh.handle_tun_packet(now, &tun_buf[..n], &mut scratch, &mut io);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                control.handle_timeout(now, clock.ns(now));
                stun.handle_timeout(now, &mut |dst, d| { let _ = udp.try_send_to(d, dst); });
                let mut io = SocketIo { udp: &udp, tun: tun.as_ref() };
                mesh.handle_timeout(now, &mut scratch, &mut io, &mut |k| punch_requests.push(k));
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                let mut io = SocketIo { udp: &udp, tun: tun.as_ref() };
                mesh.tick(now, &mut scratch, &mut io);
                mesh.handle_timeout(now, &mut scratch, &mut io, &mut |k| punch_requests.push(k));
                if tun.is_some() && (mesh.lan_groups_stale() || now >= next_groups_read) {
                    next_groups_read = now + GROUPS_INTERVAL;
                    mesh.set_lan_groups(kernel_groups(&opts.interface));
                }
                if now >= next_local_scan {
                    next_local_scan = now + LOCAL_ENDPOINTS_INTERVAL;
                    control.set_local_endpoints(now, local_endpoints(port, &opts.interface));
                    opts.state.renew_stamps(&mut persisted_floor, unix_ns().max(clock.ns(now)));
                }
            }
            Some((request, reply)) = api_rx.recv() => match request {
                Request::Status => {
                    let varies = stun.mapping_varies(control.public_endpoint());
                    let _ = reply.send(Response::Status(status(&identity, &public, &control, &mesh, &names, varies)));
                }
                Request::Down => {
                    drop(reply); // Already answered by the API task.
                    info!("`node down` asked this daemon to stop");
                    break Ok(());
                }
                Request::Ping { peer } => {
                    let now = Instant::now();
                    let mut io = SocketIo { udp: &udp, tun: tun.as_ref() };
                    match mesh.ping(now, &peer, &mut scratch, &mut io) {
                        Ok((tx, name, via)) => pings.push(PendingPing { tx, name, via, reply, deadline: now + PING_TIMEOUT }),
                        Err(e) => { let _ = reply.send(Response::Error(e.to_string())); }
                    }
                }
                Request::Netcheck => {
                    let now = Instant::now();
                    stun.refresh(now);
                    netchecks.push((reply, now + NETCHECK_WAIT));
                }
            },
            r = names.recv(&mut dns_buf) => {
                if let Ok((n, src)) = r {
                    names.answer(src, &dns_buf[..n]);
                }
            }
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
        }
    };
    names.stop();
    control.shutdown();
    while let Some(t) = control.poll_transmit() {
        let _ = udp.send_to(&t.payload, t.dst).await;
    }
    cleanup(&opts.state, tun)?;
    result
}

fn cleanup(state: &StateDir, tun: Option<tun_rs::AsyncDevice>) -> anyhow::Result<()> {
    if tun.is_some() {
        drop(tun); // Closing the TUN removes the interface and its routes.
        netconf::remove_rules();
        info!("mesh interface removed");
    }
    let _ = std::fs::remove_file(state.socket());
    Ok(())
}

/// How long `node ping` waits for an answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `node netcheck` gives STUN servers to answer.
const NETCHECK_WAIT: Duration = Duration::from_millis(1500);

struct PendingPing {
    tx: lanmesh_proto::probe::Transaction,
    name: String,
    via: Via,
    reply: oneshot::Sender<Response>,
    deadline: Instant,
}

/// Sends `node ping` answers that arrived, and timeouts for those that did not.
fn answer_pings(pings: &mut Vec<PendingPing>, mesh: &mut Mesh) {
    let replies = mesh.take_ping_replies();
    let now = Instant::now();
    let mut i = 0;
    while i < pings.len() {
        let reply = replies.iter().find(|r| r.tx == pings[i].tx);
        if reply.is_none() && now < pings[i].deadline {
            i += 1;
            continue;
        }
        let p = pings.swap_remove(i);
        let via = reply.map(|r| r.via.clone()).unwrap_or(p.via);
        let mesh_ip = mesh
            .peers(now)
            .into_iter()
            .find(|v| v.info.name == p.name)
            .map(|v| v.info.mesh_ip.to_string())
            .unwrap_or_default();
        let _ = p.reply.send(Response::Pong(PingResult {
            peer: p.name,
            mesh_ip,
            direct: matches!(via, Via::Direct(_)),
            via: via.to_string(),
            rtt_ms: reply.map(|r| r.rtt.as_secs_f64() * 1000.0),
        }));
    }
}

/// Answers `node netcheck`s whose STUN wait is over.
fn answer_netchecks(
    netchecks: &mut Vec<(oneshot::Sender<Response>, Instant)>,
    stun: &StunClient,
    control: &ControlClient,
    mesh: &Mesh,
) {
    let now = Instant::now();
    let (due, waiting): (Vec<_>, Vec<_>) = netchecks.drain(..).partition(|(_, at)| now >= *at);
    *netchecks = waiting;
    for (reply, _) in due {
        let mut seen_by: Vec<SeenBy> = control
            .public_endpoint()
            .map(|e| SeenBy {
                server: "coordinator".into(),
                endpoint: e.to_string(),
            })
            .into_iter()
            .collect();
        seen_by.extend(stun.mapped().map(|(server, e)| SeenBy {
            server: server.to_string(),
            endpoint: e.to_string(),
        }));
        let mut public_endpoints: Vec<String> =
            seen_by.iter().map(|s| s.endpoint.clone()).collect();
        public_endpoints.sort();
        public_endpoints.dedup();
        let varies = stun.mapping_varies(control.public_endpoint());
        let _ = reply.send(Response::Netcheck(Netcheck {
            udp: !seen_by.is_empty(),
            public_endpoints,
            seen_by,
            mapping_varies_by_destination: varies.unwrap_or(false),
            mapping_known: varies.is_some(),
            relays: relay_statuses(mesh),
        }));
    }
}

fn relay_statuses(mesh: &Mesh) -> Vec<RelayStatus> {
    mesh.relay_latencies()
        .into_iter()
        .map(|(name, rtt)| RelayStatus {
            name,
            latency_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
        })
        .collect()
}

fn status(
    identity: &Option<Identity>,
    public: &PublicKey,
    control: &ControlClient,
    mesh: &Mesh,
    names: &NameService,
    mapping_varies: Option<bool>,
) -> Status {
    Status {
        name: identity
            .as_ref()
            .map(|i| i.name.clone())
            .unwrap_or_default(),
        mesh_ip: identity
            .as_ref()
            .map(|i| i.placement.mesh_ip.to_string())
            .unwrap_or_default(),
        domain: identity.as_ref().map(|i| i.domain.clone()),
        names: names.describe().to_string(),
        lan_broadcast: LanBroadcastStatus {
            enabled: mesh.lan_config().enabled,
            allowed_by_network: mesh.lan_allowed(),
            active: mesh.lan_active(),
            limit_pps: mesh.lan_config().pps,
            limit_kbit: mesh.lan_config().kbit,
        },
        counters: mesh.lan_counters(),
        public_key: public.to_string(),
        coordinator: control.coordinator_addr().to_string(),
        coordinator_connected: control.is_connected(),
        problem: control.problem().map(str::to_string),
        public_endpoint: control.public_endpoint().map(|e| e.to_string()),
        mapping_varies_by_destination: mapping_varies,
        relays: relay_statuses(mesh),
        peers: mesh
            .peers(Instant::now())
            .into_iter()
            .map(|p| PeerStatus {
                dns_name: names.dns_name(&p.info.name, p.info.mesh_ip),
                name: p.info.name,
                mesh_ip: p.info.mesh_ip.to_string(),
                public_key: p.info.public_key.to_string(),
                online: p.info.online,
                path: p.path.as_str().to_string(),
                endpoint: p.endpoint.map(|e| e.to_string()),
                relay: p.relay,
                last_handshake_secs: p.last_handshake.map(|d| d.as_secs()),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            })
            .collect(),
    }
}
