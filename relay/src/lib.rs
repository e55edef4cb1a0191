//! The lanmesh relay as a library: the sans-IO forwarding core and the tokio driver (the
//! `relay` binary is a thin CLI around them; the fuzz targets drive the core directly).

pub mod daemon;
pub mod forwarder;
#[cfg(test)]
mod forwarder_tests;
