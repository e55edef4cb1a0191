//! `relay`: forwards WireGuard ciphertext between lanmesh members that cannot reach each other
//! directly (symmetric NATs, carrier-grade NAT), and never for anyone else.

use lanmesh_relay::daemon;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use lanmesh_common::state_dir::StateDir;
use lanmesh_common::{exit_on_error, hostname, init_logging, load_config, parse_auth_key};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where a relay keeps its key, the pinned coordinator key and its control socket.
const DEFAULT_STATE_DIR: &str = "/var/lib/lanmesh-relay";
/// The UDP port a relay listens on when none is given.
const DEFAULT_PORT: u16 = 3479;

#[derive(Parser)]
#[command(
    name = "relay",
    version,
    about = "A lanmesh relay: forwards WireGuard ciphertext between members that cannot reach \
             each other directly"
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
    /// Where the relay keeps its key and control socket [default: /var/lib/lanmesh-relay].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Join the coordinator and forward for its members, in the foreground.
    Serve(ServeArgs),
    /// Show members connected and traffic forwarded.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: StateDirArg,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// UDP address to forward on (also used to reach the coordinator, which tells nodes where
    /// it saw the relay) [default: 0.0.0.0:3479].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// The coordinator, as HOST or HOST:PORT [default port: 3478].
    #[arg(long, value_name = "HOST[:PORT]")]
    coordinator: Option<String>,
    /// Relay join key from `coordinator keys create --relay` (needed the first time).
    #[arg(
        long,
        value_name = "KEY",
        env = "LANMESH_RELAY_KEY",
        hide_env_values = true
    )]
    auth_key: Option<String>,
    /// Name of this relay, as nodes show it [default: the hostname].
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    dir: StateDirArg,
    /// Most traffic one member may send through this relay, in megabits per second
    /// [default: 2000].
    #[arg(long, value_name = "MBPS")]
    rate_limit_mbps: Option<u64>,
    /// TOML config file; flags given on the command line win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// `relay serve` settings from a config file (see configs/relay.toml).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RelayConfig {
    listen: Option<SocketAddr>,
    coordinator: Option<String>,
    auth_key: Option<String>,
    name: Option<String>,
    state_dir: Option<PathBuf>,
    rate_limit_mbps: Option<u64>,
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if !matches!(cli.command, Command::Serve(_)) {
        lanmesh_common::exit_quietly_on_closed_pipe();
    }
    exit_on_error(run(cli.command));
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let cfg: RelayConfig = load_config(args.config.as_deref())?;
            let Some(coordinator) = args.coordinator.or(cfg.coordinator) else {
                bail!("say which coordinator to serve: relay serve --coordinator HOST[:PORT]");
            };
            let auth_key = parse_auth_key(args.auth_key.or(cfg.auth_key))?;
            let mbps = args.rate_limit_mbps.or(cfg.rate_limit_mbps).unwrap_or(2000);
            if mbps == 0 {
                bail!("--rate-limit-mbps must be at least 1");
            }
            let opts = daemon::Options {
                listen: args
                    .listen
                    .or(cfg.listen)
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
                coordinator,
                auth_key,
                name: args.name.or(cfg.name).unwrap_or_else(|| hostname("relay")),
                state: StateDir::new(
                    args.dir.state_dir.or(cfg.state_dir),
                    DEFAULT_STATE_DIR,
                    "relay",
                ),
                bytes_per_sec: mbps * 1_000_000 / 8,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(daemon::run(opts))
        }
        Command::Status { json, dir } => {
            let state = StateDir::new(dir.state_dir, DEFAULT_STATE_DIR, "relay");
            let status: daemon::Status = lanmesh_common::local_api::call(
                &state.socket(),
                "relay",
                &daemon::Request::Status,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!(
                    "relay {} on {} (coordinator {} {})",
                    status.name,
                    status.listen,
                    status.coordinator,
                    if status.coordinator_connected {
                        "connected"
                    } else {
                        "not connected"
                    }
                );
                println!(
                    "members: {} known, {} connected",
                    status.members, status.members_connected
                );
                println!(
                    "forwarded: {} packets, {} bytes; dropped: {}",
                    status.packets_forwarded, status.bytes_forwarded, status.dropped
                );
            }
            Ok(())
        }
    }
}
