//! The lanmesh coordinator as a library: the sans-IO control server, the registry, the SQLite
//! store, the data dir and the tokio driver. The `coordinator` binary is a thin CLI around
//! them; the fuzz targets drive the control server directly.

pub mod control;
pub mod data_dir;
pub mod gate;
pub mod inline_work;
pub mod registry;
pub mod serve;
pub mod socket;
pub mod store;
pub mod store_worker;

#[cfg(test)]
mod control_tests;

use clap::Args;
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct DataDirArg {
    /// Where the coordinator keeps its key and database
    /// [default: /var/lib/lanmesh-coordinator as root, else ~/.local/share/lanmesh-coordinator].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}
