//! `node`: joins this machine to a lanmesh network.

use lanmesh_node::lan::{self, LanConfig};
use lanmesh_node::names::Backend;
use lanmesh_node::{api, daemon, mesh};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use lanmesh_common::state_dir::StateDir;
use lanmesh_common::{exit_on_error, hostname, init_logging, load_config, parse_auth_key};
use lanmesh_proto::DEFAULT_NODE_PORT;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "node",
    version,
    about = "A lanmesh node: puts this machine on the mesh VPN"
)]
struct Cli {
    /// More logging: -v for debug, -vv for trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct StateDirArg {
    /// Where the node keeps its key and control socket [default: /var/lib/lanmesh].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Join the mesh and run in the foreground until stopped (Ctrl-C, SIGTERM or `node down`).
    Up(UpArgs),
    /// Stop the running node daemon (removes the mesh interface).
    Down {
        #[command(flatten)]
        dir: StateDirArg,
    },
    /// Ping a peer over the mesh path (direct or relayed) and show how it was reached.
    Ping {
        /// The peer's name or mesh IP.
        peer: String,
        /// How many pings to send.
        #[arg(short = 'c', long = "count", value_name = "N", default_value_t = 4)]
        count: u32,
        /// Stop as soon as a reply comes over a direct path (and fail if none does).
        #[arg(long)]
        until_direct: bool,
        #[command(flatten)]
        dir: StateDirArg,
    },
    /// Check this node's network: UDP, public endpoints, NAT behaviour, relay latencies.
    Netcheck {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: StateDirArg,
    },
    /// Show this node and its peers.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: StateDirArg,
    },
}

#[derive(Args)]
struct UpArgs {
    /// The coordinator, as HOST or HOST:PORT [default port: 3478].
    #[arg(long, value_name = "HOST[:PORT]")]
    coordinator: Option<String>,
    /// Join key from `coordinator keys create` (needed the first time, unless the coordinator
    /// runs with --open).
    #[arg(
        long,
        value_name = "KEY",
        env = "LANMESH_AUTH_KEY",
        hide_env_values = true
    )]
    auth_key: Option<String>,
    /// Name of this node in the mesh [default: the hostname].
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    dir: StateDirArg,
    /// Name of the mesh network interface [default: lanmesh0].
    #[arg(long, value_name = "NAME")]
    interface: Option<String>,
    /// UDP port for WireGuard and control traffic [default: 41641].
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Extra STUN server (HOST:PORT, repeatable) to learn whether this NAT maps each
    /// destination to a different port [default: none; the coordinator is always asked].
    #[arg(long, value_name = "HOST:PORT")]
    stun: Vec<String>,
    /// Seconds between keepalives on idle paths, to hold NAT mappings open (Linux forgets idle
    /// UDP mappings after 30 s) [default: 25].
    #[arg(long, value_name = "SECS")]
    keepalive: Option<u16>,
    /// Carry broadcast and multicast between this node and its peers, so games find each
    /// other's servers as on one LAN: `--lan-broadcast=false` to switch it off [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    lan_broadcast: Option<bool>,
    /// Broadcast and multicast packets a second this node sends, and takes from each peer
    /// (1 to 1000) [default: 200].
    #[arg(long, value_name = "N")]
    lan_broadcast_pps: Option<u32>,
    /// Kilobits a second of broadcast and multicast, likewise [default: 1000].
    #[arg(long, value_name = "KBIT")]
    lan_broadcast_kbit: Option<u32>,
    /// How peer names (`alice.mesh`) get onto this machine: `resolved` (split DNS through
    /// systemd-resolved, answered by the node), `hosts` (a block in /etc/hosts), `auto`
    /// (resolved when it runs, else hosts) or `off` [default: auto].
    #[arg(long, value_name = "HOW")]
    dns: Option<Backend>,
    /// Segmentation offload: read and write the mesh interface in 64 KiB TCP/UDP trains (TUN
    /// with a virtio-net header: TSO/USO and GRO) and the socket with UDP GSO/GRO;
    /// `--offload=false` moves one packet per system call [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    offload: Option<bool>,
    /// TOML config file; flags given on the command line win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// `node up` settings from a config file (see configs/node.toml).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeConfig {
    coordinator: Option<String>,
    auth_key: Option<String>,
    name: Option<String>,
    state_dir: Option<PathBuf>,
    interface: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    stun: Vec<String>,
    keepalive_secs: Option<u16>,
    lan_broadcast: Option<bool>,
    lan_broadcast_pps: Option<u32>,
    lan_broadcast_kbit: Option<u32>,
    dns: Option<String>,
    offload: Option<bool>,
}

/// Where the node keeps its key, the pinned coordinator key and its control socket.
const DEFAULT_STATE_DIR: &str = "/var/lib/lanmesh";

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if !matches!(cli.command, Command::Up(_)) {
        lanmesh_common::exit_quietly_on_closed_pipe();
    }
    exit_on_error(run(cli.command));
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => {
            let cfg: NodeConfig = load_config(args.config.as_deref())?;
            let Some(coordinator) = args.coordinator.or(cfg.coordinator) else {
                bail!("say which coordinator to join: node up --coordinator HOST[:PORT]");
            };
            let auth_key = parse_auth_key(args.auth_key.or(cfg.auth_key))?;
            let interface = args
                .interface
                .or(cfg.interface)
                .unwrap_or_else(|| "lanmesh0".into());
            if interface.is_empty() || interface.len() > 15 || interface.contains('/') {
                bail!("bad --interface {interface:?}: use 1 to 15 characters, no '/'");
            }
            let keepalive_secs = args
                .keepalive
                .or(cfg.keepalive_secs)
                .unwrap_or(mesh::KEEPALIVE_SECS);
            if !(1..=120).contains(&keepalive_secs) {
                bail!("--keepalive must be between 1 and 120 seconds");
            }
            let lan = LanConfig {
                enabled: args.lan_broadcast.or(cfg.lan_broadcast).unwrap_or(true),
                pps: args
                    .lan_broadcast_pps
                    .or(cfg.lan_broadcast_pps)
                    .unwrap_or(lan::DEFAULT_PPS),
                kbit: args
                    .lan_broadcast_kbit
                    .or(cfg.lan_broadcast_kbit)
                    .unwrap_or(lan::DEFAULT_KBIT),
            };
            if !(1..=1000).contains(&lan.pps) {
                bail!("--lan-broadcast-pps must be between 1 and 1000 packets a second");
            }
            if !(8..=1_000_000).contains(&lan.kbit) {
                bail!("--lan-broadcast-kbit must be between 8 and 1000000 kilobits a second");
            }
            let opts = daemon::UpOptions {
                coordinator,
                auth_key,
                name: args.name.or(cfg.name).unwrap_or_else(|| hostname("node")),
                state: StateDir::new(
                    args.dir.state_dir.or(cfg.state_dir),
                    DEFAULT_STATE_DIR,
                    "node",
                ),
                interface,
                port: args.port.or(cfg.port).unwrap_or(DEFAULT_NODE_PORT),
                stun: if args.stun.is_empty() {
                    cfg.stun
                } else {
                    args.stun
                },
                keepalive_secs,
                offload: args.offload.or(cfg.offload).unwrap_or(true),
                lan,
                dns: match (args.dns, cfg.dns) {
                    (Some(d), _) => d,
                    (None, Some(d)) => d.parse().map_err(|e: String| anyhow::anyhow!(e))?,
                    (None, None) => Backend::Auto,
                },
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(daemon::run(opts))
        }
        Command::Down { dir } => {
            let state = StateDir::new(dir.state_dir, DEFAULT_STATE_DIR, "node");
            match api::call(&state.socket(), &api::Request::Down)? {
                api::Response::GoingDown => {}
                other => bail!("unexpected answer from the daemon: {other:?}"),
            }
            // Wait until the daemon has removed its interface and socket.
            for _ in 0..50 {
                if !state.socket().exists() {
                    println!("node stopped");
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            bail!("the node daemon did not stop within 5 s")
        }
        Command::Ping {
            peer,
            count,
            until_direct,
            dir,
        } => ping(
            &StateDir::new(dir.state_dir, DEFAULT_STATE_DIR, "node"),
            &peer,
            count,
            until_direct,
        ),
        Command::Netcheck { json, dir } => {
            let state = StateDir::new(dir.state_dir, DEFAULT_STATE_DIR, "node");
            let report = match api::call(&state.socket(), &api::Request::Netcheck)? {
                api::Response::Netcheck(n) => n,
                api::Response::Error(e) => bail!("{e}"),
                _ => bail!("unexpected answer from the daemon"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_netcheck(&report);
            }
            Ok(())
        }
        Command::Status { json, dir } => {
            let state = StateDir::new(dir.state_dir, DEFAULT_STATE_DIR, "node");
            let api::Response::Status(status) = api::call(&state.socket(), &api::Request::Status)?
            else {
                bail!("unexpected answer from the daemon");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
    }
}

fn ping(state: &StateDir, peer: &str, count: u32, until_direct: bool) -> anyhow::Result<()> {
    let mut answered = 0;
    for i in 0..count.max(1) {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let request = api::Request::Ping {
            peer: peer.to_string(),
        };
        let r = match api::call(&state.socket(), &request)? {
            api::Response::Pong(r) => r,
            api::Response::Error(e) => bail!("{e}"),
            _ => bail!("unexpected answer from the daemon"),
        };
        match r.rtt_ms {
            Some(ms) => {
                answered += 1;
                println!(
                    "pong from {} ({}) {} in {ms:.2} ms",
                    r.peer, r.mesh_ip, r.via
                );
                if until_direct && r.direct {
                    return Ok(());
                }
            }
            None => println!("timeout from {} ({}) {}", r.peer, r.mesh_ip, r.via),
        }
    }
    if answered == 0 {
        bail!("no reply from {peer}");
    }
    if until_direct {
        bail!("{peer} answered, but not over a direct path");
    }
    Ok(())
}

fn print_netcheck(n: &api::Netcheck) {
    println!("UDP:            {}", if n.udp { "yes" } else { "no" });
    for s in &n.seen_by {
        println!("public endpoint {} (seen by {})", s.endpoint, s.server);
    }
    let mapping = match (n.mapping_known, n.mapping_varies_by_destination) {
        (false, _) => "unknown (needs a relay or a --stun server besides the coordinator)",
        (true, true) => "varies by destination (symmetric NAT: direct paths need a cone NAT on the other side; relays cover the rest)",
        (true, false) => "the same for every destination (hole punching works)",
    };
    println!("NAT mapping:    {mapping}");
    if n.relays.is_empty() {
        println!("relays:         none listed by the coordinator");
    }
    for r in &n.relays {
        match r.latency_ms {
            Some(ms) => println!("relay {:<16} {ms:.1} ms", r.name),
            None => println!("relay {:<16} not answering", r.name),
        }
    }
}

fn print_status(s: &api::Status) {
    let coord = if s.coordinator_connected {
        "connected"
    } else {
        "not connected"
    };
    println!(
        "{} {} (coordinator {} {coord})",
        if s.name.is_empty() {
            "(registering)"
        } else {
            &s.name
        },
        s.mesh_ip,
        s.coordinator
    );
    if let Some(problem) = &s.problem {
        println!("warning: {problem}");
    }
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            let path = match (&p.path[..], &p.endpoint, &p.relay) {
                ("direct", Some(ep), _) => format!("direct {ep}"),
                ("relay", _, Some(relay)) => format!("via relay {relay}"),
                (other, _, _) => other.to_string(),
            };
            vec![
                p.name.clone(),
                p.mesh_ip.clone(),
                if p.online { "yes" } else { "no" }.to_string(),
                path,
                p.last_handshake_secs
                    .map_or("-".to_string(), |s| format!("{s}s ago")),
                human_bytes(p.rx_bytes),
                human_bytes(p.tx_bytes),
            ]
        })
        .collect();
    let header = ["PEER", "MESH IP", "ONLINE", "PATH", "HANDSHAKE", "RX", "TX"];
    lanmesh_common::print_table(&header, &rows, 5);
    // After a blank line (the table ends there): LAN traffic and names.
    println!();
    let lan = &s.lan_broadcast;
    let state = match (lan.enabled, lan.allowed_by_network) {
        (true, true) => format!("on (limit {}/s, {} kbit/s)", lan.limit_pps, lan.limit_kbit),
        (false, _) => "off (--lan-broadcast=false)".to_string(),
        (true, false) => "off (switched off by the coordinator)".to_string(),
    };
    println!(
        "lan broadcast: {state}; sent {}, received {}, dropped {}",
        s.counters.broadcast_tx, s.counters.broadcast_rx, s.counters.broadcast_dropped
    );
    let d = &s.data_path;
    let per = |packets: u64, calls: u64| {
        if calls == 0 {
            "-".to_string()
        } else {
            format!("{:.1}", packets as f64 / calls as f64)
        }
    };
    println!(
        "data path: offload {}, UDP GSO {}; packets per call: TUN read {}, TUN write {}, UDP send {}, UDP receive {}",
        if d.tun_offload { "on" } else { "off" },
        if d.udp_gso { "on" } else { "off" },
        per(d.tun_packets_in, d.tun_reads),
        per(d.tun_packets_out, d.tun_writes),
        per(d.udp_datagrams_out, d.udp_sends),
        per(d.udp_datagrams_in, d.udp_receives),
    );
    if let Some(domain) = &s.domain {
        match s.names.as_str() {
            "off" | "" => println!("names: off (--dns off)"),
            how => println!("names: *.{domain} through {how}"),
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
