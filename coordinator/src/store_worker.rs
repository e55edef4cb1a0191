//! Storage off the control loop: the serving coordinator's [`StoreOp`]s run here, in order for
//! admissions, coalesced and batched for "last seen" and Hello timestamps. A busy database
//! (an admin command, a backup holding a lock) only delays them: they are retried until they
//! succeed, and nobody is refused for it.

use crate::control::{StoreDone, StoreOp};
use crate::registry::NodeRecord;
use crate::store::{is_busy, SqliteStore, BUSY};
use lanmesh_proto::join_key::JoinSecret;
use lanmesh_proto::PublicKey;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// "Last seen" and Hello timestamps are written at most this often (in one transaction).
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the database is checked for changes made by admin commands.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A busy database is tried again after this long.
const BUSY_RETRY: Duration = Duration::from_millis(100);

pub struct StoreWorker {
    store: SqliteStore,
    admits: VecDeque<(u64, NodeRecord, Option<JoinSecret>)>,
    seen: HashMap<PublicKey, (Option<SocketAddr>, u64)>,
    hello_ts: HashMap<PublicKey, u64>,
    last_flush: Option<Instant>,
    /// Something waits that should be written at once.
    urgent: bool,
    busy_since: Option<Instant>,
}

impl StoreWorker {
    pub fn new(store: SqliteStore) -> StoreWorker {
        StoreWorker {
            store,
            admits: VecDeque::new(),
            seen: HashMap::new(),
            hello_ts: HashMap::new(),
            last_flush: None,
            urgent: false,
            busy_since: None,
        }
    }

    /// The database (tests and admin-like access from the same thread).
    pub fn store_mut(&mut self) -> &mut SqliteStore {
        &mut self.store
    }

    pub fn submit(&mut self, op: StoreOp) {
        match op {
            StoreOp::Admit {
                ticket,
                record,
                join,
            } => self.admits.push_back((ticket, record, join)),
            StoreOp::SaveSeen {
                key,
                endpoint,
                last_seen_ms,
                urgent,
            } => {
                self.urgent |= urgent;
                let e = self.seen.entry(key).or_insert((None, 0));
                e.0 = endpoint.or(e.0);
                e.1 = e.1.max(last_seen_ms);
            }
            StoreOp::SaveHelloTime { key, timestamp } => {
                let e = self.hello_ts.entry(key).or_insert(0);
                *e = (*e).max(timestamp);
            }
        }
    }

    /// Whether something waits to be written.
    pub fn has_work(&self) -> bool {
        !self.admits.is_empty() || !self.seen.is_empty() || !self.hello_ts.is_empty()
    }

    /// Does what it can now (`force` writes the coalesced updates whatever the interval);
    /// returns what finished. On a busy database the rest stays queued.
    pub fn run(&mut self, now: Instant, now_ms: u64, force: bool) -> Vec<StoreDone> {
        let mut done = Vec::new();
        while let Some((ticket, record, join)) = self.admits.front() {
            match self.store.add_node(record, join.as_ref(), now_ms) {
                Err(crate::control::AdmitError::Storage(e)) if e == BUSY => {
                    return self.busy(now, done);
                }
                result => {
                    done.push(StoreDone::Admitted {
                        ticket: *ticket,
                        result,
                    });
                    self.admits.pop_front();
                }
            }
        }
        let due = force || self.urgent || self.last_flush.is_none_or(|t| now >= t + FLUSH_INTERVAL);
        if due && (!self.seen.is_empty() || !self.hello_ts.is_empty()) {
            let seen: Vec<_> = self.seen.iter().map(|(k, (e, t))| (*k, *e, *t)).collect();
            let ts: Vec<_> = self.hello_ts.iter().map(|(k, t)| (*k, *t)).collect();
            match self.store.save_seen(&seen, &ts) {
                Ok(()) => {
                    self.seen.clear();
                    self.hello_ts.clear();
                    self.last_flush = Some(now);
                    self.urgent = false;
                }
                Err(e) if is_busy(&e) => return self.busy(now, done),
                Err(e) => {
                    warn!("could not save when nodes were seen: {e}");
                    self.seen.clear();
                    self.hello_ts.clear();
                    self.urgent = false;
                }
            }
        }
        if let Some(since) = self.busy_since.take() {
            debug!(
                "the database is free again after {} ms",
                now.saturating_duration_since(since).as_millis()
            );
        }
        done
    }

    fn busy(&mut self, now: Instant, done: Vec<StoreDone>) -> Vec<StoreDone> {
        if self.busy_since.is_none() {
            self.busy_since = Some(now);
            warn!("the database is busy (locked by another process); retrying");
        }
        done
    }

    /// The stored nodes, if another process changed the database.
    pub fn poll_changes(&mut self) -> Option<StoreDone> {
        if !self.store.changed_elsewhere() {
            return None;
        }
        match self.store.load_nodes() {
            Ok(nodes) => Some(StoreDone::Reloaded(nodes)),
            Err(e) => {
                warn!("could not reload nodes after an admin change: {e}");
                None
            }
        }
    }

    /// Runs on the calling thread until `ops` closes: takes operations, does them, and hands
    /// what finished (and admin changes) to `done`.
    pub fn serve(
        mut self,
        ops: mpsc::Receiver<StoreOp>,
        mut done: impl FnMut(StoreDone) -> bool,
        mut now_ms: impl FnMut() -> u64,
    ) {
        let _ = self.store.set_busy_timeout(Duration::from_millis(50));
        let mut last_poll = Instant::now();
        loop {
            let wait = if self.has_work() {
                BUSY_RETRY
            } else {
                POLL_INTERVAL
            };
            match ops.recv_timeout(wait) {
                Ok(op) => self.submit(op),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.run(Instant::now(), now_ms(), true);
                    return;
                }
            }
            while let Ok(op) = ops.try_recv() {
                self.submit(op);
            }
            for d in self.run(Instant::now(), now_ms(), false) {
                if !done(d) {
                    return;
                }
            }
            if last_poll.elapsed() >= POLL_INTERVAL {
                last_poll = Instant::now();
                if let Some(d) = self.poll_changes() {
                    if !done(d) {
                        return;
                    }
                }
            }
        }
    }
}
