//! `coordinator serve`: the tokio driver around [`ControlServer`]. It only moves datagrams,
//! fires timers and hands the core's [`Work`] to threads: Hello workers (one per core) for the
//! Diffie-Hellmans, and a storage thread ([`StoreWorker`]) that also notices admin changes.

use crate::control::{
    answer_hello, open_hello, ControlServer, Settings, StoreDone, Work, DEFAULT_OPEN_MAX_NODES,
};
use crate::data_dir::DataDir;
use crate::registry::Registry;
use crate::socket::ControlSocket;
use crate::store_worker::StoreWorker;
use anyhow::{bail, Context};
use clap::Args;
use ipnet::Ipv4Net;
use lanmesh_common::unix_ms;
use lanmesh_proto::messages::{valid_domain, DEFAULT_DOMAIN, MAX_DOMAIN_LEN};
use lanmesh_proto::{stun, DEFAULT_COORDINATOR_PORT, DEFAULT_NETWORK};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc as tmpsc;
use tracing::{info, warn};

#[derive(Args)]
pub struct ServeArgs {
    /// UDP address to listen on [default: 0.0.0.0:3478].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub dir: crate::DataDirArg,
    /// Mesh network to hand addresses out of [default: 100.64.0.0/10].
    #[arg(long, value_name = "CIDR")]
    pub network: Option<Ipv4Net>,
    /// Let any node join without a join key (only for a network you trust, like a LAN party).
    #[arg(long)]
    pub open: bool,
    /// With --open: admit nodes without a key only while fewer than this many are registered
    /// (registrations are also rate-limited per source address) [default: 64].
    #[arg(long, value_name = "N")]
    pub open_max_nodes: Option<usize>,
    /// Show nodes as offline after this many seconds of silence [default: 60].
    #[arg(long, value_name = "SECS")]
    pub offline_after: Option<u64>,
    /// A second UDP port answering STUN, so nodes can tell whether their NAT mapping varies by
    /// destination; 0 for none [default: the listen port + 2].
    #[arg(long, value_name = "PORT")]
    pub stun_port: Option<u16>,
    /// Tell every node to carry no broadcast or multicast between nodes (LAN-game discovery,
    /// mDNS, SSDP) [default: carried; each node can also switch it off for itself].
    #[arg(long)]
    pub no_lan_broadcast: bool,
    /// DNS domain of peer names: `alice.party` with `--domain party` [default: mesh].
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// TOML config file; flags given on the command line win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `coordinator serve` settings from a config file (see configs/coordinator.toml).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    network: Option<Ipv4Net>,
    open: Option<bool>,
    open_max_nodes: Option<usize>,
    offline_after_secs: Option<u64>,
    stun_port: Option<u16>,
    lan_broadcast: Option<bool>,
    domain: Option<String>,
}

pub fn run(args: ServeArgs, config: ServeConfig) -> anyhow::Result<()> {
    let listen = args
        .listen
        .or(config.listen)
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], DEFAULT_COORDINATOR_PORT)));
    let network = args
        .network
        .or(config.network)
        .unwrap_or_else(|| DEFAULT_NETWORK.parse().expect("default network"));
    let open = args.open || config.open.unwrap_or(false);
    let open_max_nodes = args
        .open_max_nodes
        .or(config.open_max_nodes)
        .unwrap_or(DEFAULT_OPEN_MAX_NODES);
    let offline_after = args
        .offline_after
        .or(config.offline_after_secs)
        .unwrap_or(60);
    if offline_after < 4 {
        bail!("--offline-after must be at least 4 seconds");
    }
    let stun_port = match args.stun_port.or(config.stun_port) {
        Some(0) => None,
        Some(p) => Some(p),
        // With an ephemeral listen port (0), an ephemeral STUN port too.
        None if listen.port() == 0 => Some(0),
        None => listen.port().checked_add(2),
    };
    let lan_broadcast = !args.no_lan_broadcast && config.lan_broadcast.unwrap_or(true);
    let domain = args
        .domain
        .or(config.domain)
        .unwrap_or_else(|| DEFAULT_DOMAIN.into())
        .to_ascii_lowercase();
    if !valid_domain(&domain) {
        bail!(
            "--domain {domain:?} is not a DNS domain: use labels of letters, digits and \
             hyphens separated by dots, at most {MAX_DOMAIN_LEN} characters (e.g. mesh, party)"
        );
    }
    let data_dir = args.dir.data_dir.or(config.data_dir);
    let dd = DataDir::open(data_dir.as_deref(), Some(network))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let settings = Settings {
        open,
        heartbeat_secs: (offline_after / 4).clamp(1, 10) as u16,
        stun_port,
        open_max_nodes,
        lan_broadcast,
        domain,
    };
    runtime.block_on(serve(dd, listen, network, settings, offline_after))
}

async fn serve(
    dd: DataDir,
    listen: SocketAddr,
    network: Ipv4Net,
    settings: Settings,
    offline_after: u64,
) -> anyhow::Result<()> {
    let open = settings.open;
    let socket = UdpSocket::bind(listen).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "UDP {listen} is already in use (another coordinator?): stop it or pick another \
             address with --listen"
        ),
        std::io::ErrorKind::AddrNotAvailable => anyhow::anyhow!(
            "{} is not an address of this machine: pick one of its addresses with --listen",
            listen.ip()
        ),
        _ => anyhow::anyhow!("cannot listen on UDP {listen}: {e}"),
    })?;
    let fresh_key = if dd.has_usable_key()? {
        None
    } else {
        let kind = crate::store::KeyKind {
            reusable: true,
            relay: false,
        };
        Some(dd.create_join_key(kind, Some(Duration::from_secs(24 * 3600)))?)
    };
    let listen = socket.local_addr().unwrap_or(listen);
    let mut socket = ControlSocket::new(socket)
        .map_err(|e| anyhow::anyhow!("cannot set up UDP {listen}: {e}"))?;
    print_banner(&dd, listen, network, open, fresh_key.as_ref());

    let second_stun = match settings.stun_port {
        Some(port) => Some(
            UdpSocket::bind(SocketAddr::new(listen.ip(), port))
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen for STUN on UDP port {port}: {e} (pick another with \
                         --stun-port, or 0 for none)"
                    )
                })?,
        ),
        None => None,
    };
    // Nodes are told the port actually bound (it differs when it was ephemeral).
    let mut settings = settings;
    settings.stun_port = match &second_stun {
        Some(socket) => Some(socket.local_addr()?.port()),
        None => None,
    };
    let registry = Registry::new(network, offline_after * 1000);
    let mut store = dd.store;
    let nodes = store
        .load_nodes()
        .context("cannot load nodes from the database")?;
    let mut core = ControlServer::new(
        dd.public,
        nodes,
        registry,
        settings,
        Instant::now(),
        unix_ms(),
        rand::random(),
    );
    info!(nodes = core.registry().len(), "coordinator ready");

    // Results of the threads come back on one channel each.
    let (opened_tx, mut opened_rx) = tmpsc::unbounded_channel();
    let (answered_tx, mut answered_rx) = tmpsc::unbounded_channel();
    let (store_done_tx, mut store_done_rx) = tmpsc::unbounded_channel::<StoreDone>();
    let hello_jobs = spawn_hello_workers(dd.private, opened_tx, answered_tx)?;
    let (store_tx, store_rx) = mpsc::channel();
    let store_thread = std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            StoreWorker::new(store).serve(store_rx, |d| store_done_tx.send(d).is_ok(), unix_ms)
        })
        .context("cannot start the storage thread")?;

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut stun_buf = [0u8; 576];
    loop {
        while let Some(w) = core.poll_work() {
            match w {
                Work::Store(op) => {
                    let _ = store_tx.send(op);
                }
                job => {
                    let _ = hello_jobs.send(job);
                }
            }
        }
        while let Some(t) = core.poll_transmit() {
            socket.send(t);
        }
        let wake = core
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let pending = socket.has_pending();
        tokio::select! {
            r = socket.readable() => {
                if let Err(e) = r {
                    warn!("receive failed: {e}");
                    continue;
                }
                // Read a few batches before going round (a flood is read in bulk; the
                // transmits they earned go out, and timers run, in between).
                for _ in 0..RECV_BATCHES {
                    let now = Instant::now();
                    if socket.recv_batch(|src, d| core.handle_datagram(now, src, d)) == 0 {
                        break;
                    }
                    while let Some(t) = core.poll_transmit() {
                        socket.send(t);
                    }
                }
            },
            r = socket.writable(), if pending => {
                if r.is_ok() {
                    socket.flush();
                }
            }
            r = recv_stun(second_stun.as_ref(), &mut stun_buf) => {
                if let (Ok((n, src)), Some(socket)) = (r, second_stun.as_ref()) {
                    let mut answer = [0u8; 64];
                    if let Some(len) = stun::answer(src, &stun_buf[..n], &mut answer) {
                        let _ = socket.try_send_to(&answer[..len], src);
                    }
                }
            }
            Some((src, result)) = opened_rx.recv() => core.handle_opened(Instant::now(), src, result),
            Some((ticket, result)) = answered_rx.recv() => core.handle_answered(Instant::now(), ticket, result),
            Some(done) = store_done_rx.recv() => core.handle_store_done(Instant::now(), done),
            _ = tokio::time::sleep_until(wake.into()) => core.handle_timeout(Instant::now()),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    if socket.dropped_best_effort() > 0 {
        info!(
            dropped = socket.dropped_best_effort(),
            "answers to unauthenticated input dropped for want of socket buffer room"
        );
    }
    // Let storage finish what it has (last-seen times).
    drop(store_tx);
    let _ = store_thread.join();
    info!("coordinator stopped");
    Ok(())
}

/// Receive batches per wake-up.
const RECV_BATCHES: usize = 8;

type Opened = (
    SocketAddr,
    Result<lanmesh_proto::channel::IncomingHello, lanmesh_proto::channel::ChannelError>,
);
type AnsweredMsg = (u64, crate::control::Answered);

/// Starts one Hello worker per core; returns where to send them Hello work.
fn spawn_hello_workers(
    private: [u8; 32],
    opened: tmpsc::UnboundedSender<Opened>,
    answered: tmpsc::UnboundedSender<AnsweredMsg>,
) -> anyhow::Result<mpsc::Sender<Work>> {
    let (tx, rx) = mpsc::channel::<Work>();
    let rx = Arc::new(Mutex::new(rx));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
    for i in 0..workers {
        let rx = rx.clone();
        let opened = opened.clone();
        let answered = answered.clone();
        std::thread::Builder::new()
            .name(format!("hello-{i}"))
            .spawn(move || loop {
                let job = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let ok = match job {
                    Ok(Work::OpenHello { src, datagram, .. }) => {
                        opened.send((src, open_hello(&private, &datagram))).is_ok()
                    }
                    Ok(Work::AnswerHello {
                        ticket,
                        incoming,
                        index,
                        welcome,
                    }) => answered
                        .send((ticket, answer_hello(*incoming, index, &welcome)))
                        .is_ok(),
                    Ok(Work::Store(_)) => true,
                    Err(_) => false,
                };
                if !ok {
                    return;
                }
            })
            .context("cannot start a hello worker thread")?;
    }
    Ok(tx)
}

/// Receives on the second STUN socket, if there is one (else waits forever).
async fn recv_stun(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

fn print_banner(
    dd: &DataDir,
    listen: SocketAddr,
    network: Ipv4Net,
    open: bool,
    fresh_key: Option<&lanmesh_proto::JoinKey>,
) {
    println!("lanmesh coordinator listening on udp {listen}");
    println!("  public key:   {}", dd.public);
    println!("  mesh network: {network}");
    println!("  data dir:     {}", dd.path.display());
    if open {
        println!();
        println!("  !!! OPEN MODE: ANY node that can reach this port may join without a key. !!!");
        println!("  !!! Use it only on a network you trust, e.g. for a LAN party.            !!!");
    }
    let host = join_address(listen);
    println!();
    match (fresh_key, open) {
        (_, true) => println!("Join a node with:\n  sudo node up --coordinator {host}"),
        (Some(key), false) => println!(
            "Join a node with this new reusable key (valid 24h):\n  sudo node up --coordinator {host} --auth-key {key}"
        ),
        (None, false) => println!(
            "Join a node with a key from `coordinator keys create`:\n  sudo node up --coordinator {host} --auth-key <KEY>"
        ),
    }
    println!();
}

/// The address nodes should use: the listen address, or this machine's first non-loopback
/// address when listening on all of them.
fn join_address(listen: SocketAddr) -> String {
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    let ip = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .find(|ip| matches!(ip, IpAddr::V4(v4) if !v4.is_loopback()));
    match ip {
        Some(ip) => SocketAddr::new(ip, listen.port()).to_string(),
        None => format!("<this-host>:{}", listen.port()),
    }
}
