//! The lanmesh node as a library: the sans-IO cores (path finder, relay client, data plane,
//! STUN client), the local API types and the tokio driver. The `node` binary is a thin CLI
//! around them; the fuzz targets drive the cores directly.

pub mod api;
pub mod daemon;
pub mod demux;
pub mod lan;
pub mod mesh;
pub mod name_service;
pub mod names;
pub mod netconf;
pub mod node_state;
pub mod paths;
pub mod relays;
pub mod stun_client;
pub mod tun_batch;
pub mod wake_timer;
pub mod wg_clock;

#[cfg(test)]
mod mesh_tests;
