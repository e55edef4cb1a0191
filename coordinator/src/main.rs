//! `coordinator`: registers lanmesh nodes, hands out mesh IPs and tells every node about its
//! peers.

use lanmesh_coordinator::store::RenameOutcome;
use lanmesh_coordinator::{data_dir, registry, serve, store, DataDirArg};

use anyhow::bail;
use clap::{Parser, Subcommand};
use lanmesh_common::{exit_on_error, init_logging, load_config, parse_duration, unix_ms};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "The lanmesh coordinator: registers nodes, \
    exchanges their WireGuard keys, hands out mesh IPs and tracks who is online"
)]
struct Cli {
    /// More logging: -v for debug, -vv for trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator in the foreground.
    Serve(serve::ServeArgs),
    /// Manage join keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List and remove nodes.
    #[command(subcommand)]
    Nodes(NodesCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a join key and print it (the last line of output is the key).
    Create {
        /// Let the key admit any number of nodes (default: one node only).
        #[arg(long)]
        reusable: bool,
        /// A key for relays (`relay serve --auth-key`), not for nodes.
        #[arg(long)]
        relay: bool,
        /// How long the key stays valid: 90s, 30m, 24h, 7d, or "never".
        #[arg(long, default_value = "24h", value_name = "DURATION")]
        expires: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// List join keys (ids only; secrets are never stored).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Revoke a join key: nodes that have not joined with it yet cannot any more.
    Revoke {
        /// The key itself (lmk1-...) or its id from `keys list`.
        #[arg(value_name = "KEY|ID")]
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Subcommand)]
enum NodesCommand {
    /// List registered nodes.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Nodes silent for longer than this many seconds show as offline.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        offline_after: u64,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Rename a node: its peers know it (and resolve it) by the new name within a second.
    Rename {
        /// The node's current name, as `nodes list` shows it.
        name: String,
        /// The new name: lowercase letters, digits and inner hyphens, at most 63.
        new_name: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Remove a node: its peers drop it within a second and it must join again with a key.
    Remove {
        /// The node's (or relay's) name, as `nodes list` shows it.
        name: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if !matches!(cli.command, Command::Serve(_)) {
        lanmesh_common::exit_quietly_on_closed_pipe();
    }
    exit_on_error(run(cli));
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = load_config(args.config.as_deref())?;
            serve::run(args, config)
        }
        Command::Keys(KeysCommand::Create {
            reusable,
            relay,
            expires,
            dir,
        }) => {
            // `keys create --data-dir DIR` may make a new data dir (to prepare keys before the
            // first serve); without --data-dir the default one must exist.
            let create = if dir.data_dir.is_some() {
                data_dir::Create::Yes
            } else {
                data_dir::Create::No
            };
            let dd = data_dir::DataDir::open_admin(dir.data_dir.as_deref(), create)?;
            let expires = match expires.as_str() {
                "never" => None,
                text => Some(parse_duration(text).map_err(anyhow::Error::msg)?),
            };
            let key = dd.create_join_key(store::KeyKind { reusable, relay }, expires)?;
            let kind = match (reusable, relay) {
                (true, false) => "reusable",
                (false, false) => "one-off",
                (true, true) => "reusable relay",
                (false, true) => "one-off relay",
            };
            let until = expires.map_or("never expires".to_string(), |d| {
                format!("expires in {}", human_duration(d))
            });
            if relay {
                println!("New {kind} join key ({until}). Start a relay with:");
                println!("  relay serve --coordinator <this-host>:<port> --auth-key {key}");
            } else {
                println!("New {kind} join key ({until}). Join a node with:");
                println!("  sudo node up --coordinator <this-host>:<port> --auth-key {key}");
            }
            println!("{key}");
            Ok(())
        }
        Command::Keys(KeysCommand::List { json, dir }) => {
            let dd = data_dir::DataDir::open_admin(dir.data_dir.as_deref(), data_dir::Create::No)?;
            let keys = dd.store.list_keys()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
                return Ok(());
            }
            let now = unix_ms();
            println!(
                "{:<18} {:<10} {:<6} {:<10} STATE",
                "ID", "KIND", "USES", "EXPIRES"
            );
            for k in keys {
                let kind = match (k.reusable, k.relay) {
                    (true, false) => "reusable",
                    (false, false) => "one-off",
                    (true, true) => "relay",
                    (false, true) => "relay-once",
                };
                let expires = k.expires_ms.map_or("never".into(), |e| {
                    if e <= now {
                        "expired".into()
                    } else {
                        format!("in {}", human_duration(Duration::from_millis(e - now)))
                    }
                });
                let state = if k.revoked {
                    "revoked"
                } else if k.usable(now) {
                    "usable"
                } else {
                    "spent"
                };
                println!(
                    "{:<18} {kind:<10} {:<6} {expires:<10} {state}",
                    k.id, k.uses
                );
            }
            Ok(())
        }
        Command::Keys(KeysCommand::Revoke { id, dir }) => {
            let dd = data_dir::DataDir::open_admin(dir.data_dir.as_deref(), data_dir::Create::No)?;
            let id = match id.trim().parse::<lanmesh_proto::JoinKey>() {
                Ok(key) => lanmesh_proto::join_key::hex_id(&key.secret.id),
                Err(_) => id.trim().to_lowercase(),
            };
            match dd.store.revoke_key(&id)? {
                0 => bail!("no join key with id {id}: see `coordinator keys list`"),
                _ => println!("revoked join key {id}"),
            }
            Ok(())
        }
        Command::Nodes(NodesCommand::List {
            json,
            offline_after,
            dir,
        }) => {
            let mut dd =
                data_dir::DataDir::open_admin(dir.data_dir.as_deref(), data_dir::Create::No)?;
            let nodes = dd.list_nodes(Duration::from_secs(offline_after))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = nodes
                .into_iter()
                .map(|n| {
                    vec![
                        n.name,
                        n.role,
                        if n.mesh_ip.is_empty() {
                            "-".into()
                        } else {
                            n.mesh_ip
                        },
                        if n.online { "yes" } else { "no" }.into(),
                        format!(
                            "{} ago",
                            human_duration(Duration::from_secs(n.last_seen_secs_ago))
                        ),
                        n.endpoint.unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            let header = ["NAME", "ROLE", "MESH IP", "ONLINE", "LAST SEEN", "ENDPOINT"];
            lanmesh_common::print_table(&header, &rows, usize::MAX);
            Ok(())
        }
        Command::Nodes(NodesCommand::Rename {
            name,
            new_name,
            dir,
        }) => {
            if registry::sanitize_name(&new_name) != new_name {
                bail!(
                    "{new_name:?} cannot be a node name: use lowercase letters, digits and inner \
                     hyphens, at most 63 (e.g. {:?})",
                    registry::sanitize_name(&new_name)
                );
            }
            let dd = data_dir::DataDir::open_admin(dir.data_dir.as_deref(), data_dir::Create::No)?;
            match dd.store.rename_node(&name, &new_name)? {
                RenameOutcome::Renamed => println!("renamed node {name} to {new_name}"),
                RenameOutcome::NotFound => {
                    bail!("no node named {name:?}: see `coordinator nodes list`")
                }
                RenameOutcome::Taken => {
                    bail!("another node is called {new_name:?}: pick another name, or rename or remove that one first")
                }
            }
            Ok(())
        }
        Command::Nodes(NodesCommand::Remove { name, dir }) => {
            let dd = data_dir::DataDir::open_admin(dir.data_dir.as_deref(), data_dir::Create::No)?;
            if !dd.store.remove_node(&name)? {
                bail!("no node named {name:?}: see `coordinator nodes list`");
            }
            println!("removed node {name}");
            Ok(())
        }
    }
}

/// "42s", "5m", "3h", "2d".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
