//! The control server's work run on the caller's thread, for the deterministic drivers (unit
//! tests, the simulator, fuzzing, seed generation); the daemon runs the same work on threads of
//! its own (`serve.rs`).

use crate::control::{answer_hello, open_hello, ControlServer, Work};
use crate::store_worker::StoreWorker;
use std::time::Instant;

/// Runs what `server` asks for until there is nothing left: Hellos opened and answered with
/// the coordinator's `private` key, storage through `store` (left waiting while `hold_store`,
/// as a busy database would). `now_ms` is the wall clock at `now`.
pub fn run_work_inline(
    server: &mut ControlServer,
    store: &mut StoreWorker,
    private: &[u8; 32],
    now: Instant,
    now_ms: u64,
    hold_store: bool,
) {
    loop {
        let mut did = false;
        while let Some(w) = server.poll_work() {
            did = true;
            match w {
                Work::OpenHello { src, datagram, .. } => {
                    server.handle_opened(now, src, open_hello(private, &datagram));
                }
                Work::AnswerHello {
                    ticket,
                    incoming,
                    index,
                    welcome,
                } => {
                    let answered = answer_hello(*incoming, index, &welcome);
                    server.handle_answered(now, ticket, answered);
                }
                Work::Store(op) => store.submit(op),
            }
        }
        if !hold_store {
            for done in store.run(now, now_ms, true) {
                did = true;
                server.handle_store_done(now, done);
            }
        }
        if !did {
            return;
        }
    }
}
