//! Datagrams that came through a relay: bind answers and delivered WireGuard (or probes).

use super::{lan_traffic, transmit, written, Mesh};
use crate::relays::HomeChange;
use boringtun::noise::TunnResult;
use lanmesh_proto::header::ControlKind;
use lanmesh_proto::probe;
use lanmesh_proto::relay::{frame_kind, parse_deliver, SEND_HEADER};
use std::net::SocketAddr;
use std::time::Instant;
use tracing::{info, warn};

impl Mesh {
    /// A relay frame (a bind answer or a delivered datagram) from `src`.
    pub fn handle_relay_frame(
        &mut self,
        now: Instant,
        src: SocketAddr,
        frame: &[u8],
        scratch: &mut [u8],
    ) {
        crate::wg_clock::set(now);
        if !self.relays.is_relay(src) {
            return self.dropped(now, format_args!("relay frame from a non-relay {src}"));
        }
        if frame_kind(frame) == Some(ControlKind::RelayBound) {
            match self.relays.handle_bound(now, src, frame) {
                Some(HomeChange::Now(name)) => info!(relay = %name, "home relay"),
                Some(HomeChange::Lost(name)) => warn!(relay = %name, "home relay lost"),
                None => {}
            }
            return;
        }
        let Some((from, payload)) = parse_deliver(frame) else {
            return self.dropped(now, format_args!("malformed relay frame from {src}"));
        };
        if probe::sender(payload).is_some() {
            if probe::sender(payload) != Some(from) {
                return self.dropped(now, format_args!("relayed probe from another key"));
            }
            return self.probe_from(now, src, Some(src), payload, scratch);
        }
        // The relay checked that `from` is a member; a known peer gets its tunnel now.
        let Some(slot) = self.ensure(now, &from) else {
            return self.dropped(now, format_args!("relayed datagram from an unknown key"));
        };
        let peer = self.slots[slot].as_mut().expect("indexed slot is filled");
        let out = &mut scratch[SEND_HEADER..];
        match peer.tunn.decapsulate(None, payload, out) {
            TunnResult::WriteToNetwork(b) => {
                let n = b.len();
                // The peer reached us through a relay: answer the same way.
                if peer.paths.best().is_none() {
                    peer.relayed = true;
                }
                transmit(peer, &mut self.relays, scratch, n, &mut self.out);
            }
            TunnResult::WriteToTunnelV4(inner, inner_src) => {
                if peer.paths.best().is_none() {
                    peer.relayed = true;
                }
                let (lan, drops) = (&mut self.lan, &mut self.drops);
                lan_traffic::inner_to_tun(
                    lan,
                    drops,
                    self.epoch,
                    peer,
                    now,
                    (inner, inner_src),
                    &mut self.out,
                );
            }
            _ => {}
        }
        // Packets queued while the handshake ran, once a session is current (see
        // `Mesh::handle_datagram`).
        if peer.session_alive() {
            while let Some(n) = written(peer.tunn.decapsulate(
                None,
                &[],
                &mut scratch[SEND_HEADER..],
            )) {
                transmit(peer, &mut self.relays, scratch, n, &mut self.out);
            }
        }
    }
}
