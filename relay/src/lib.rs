//! The lanmesh relay as a library: the sans-IO core (`RelayState`: control client and
//! forwarder) and the tokio driver (the `relay` binary is a thin CLI around them; the fuzz
//! targets and the simulator drive the cores directly).

pub mod daemon;
pub mod forwarder;
#[cfg(test)]
mod forwarder_tests;
pub mod relay_state;
