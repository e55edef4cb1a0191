//! The driver's one timer: a timerfd, re-armed only when the core's next timeout moves. An
//! idle node then wakes once per deadline (tokio's timer wheel wakes twice for deadlines
//! further than 64 ms away: at the wheel slot, then at the deadline), and a busy one makes
//! no timer system call per packet.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

pub struct WakeTimer {
    fd: AsyncFd<OwnedFd>,
    armed: Option<Instant>,
}

impl WakeTimer {
    pub fn new() -> io::Result<WakeTimer> {
        // SAFETY: plain system call; the descriptor is owned from here on.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the descriptor is owned by the AsyncFd, which deregisters it before closing.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(WakeTimer { fd, armed: None })
    }

    /// Fires at `deadline` (at once if it passed); a no-op when already set for it.
    pub fn set(&mut self, deadline: Instant) -> io::Result<()> {
        if self.armed == Some(deadline) {
            return Ok(());
        }
        // A zero value would disarm the timer: a deadline that passed fires in 1 ns.
        let after = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a live timerfd and a valid itimerspec.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = Some(deadline);
        Ok(())
    }

    /// Waits until the timer fires.
    pub async fn wait(&mut self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            let read = ready.try_io(|fd| {
                let mut expirations = [0u8; 8];
                // SAFETY: reading 8 bytes into an 8-byte buffer.
                let n = unsafe { libc::read(fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match read {
                Ok(Ok(())) => {
                    self.armed = None;
                    return Ok(());
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_at_the_deadline_and_moves_with_it() {
        let mut t = WakeTimer::new().unwrap();
        let start = Instant::now();
        t.set(start + Duration::from_millis(500)).unwrap();
        // Moved earlier before it fired: the new deadline wins.
        t.set(start + Duration::from_millis(30)).unwrap();
        t.wait().await.unwrap();
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_millis(400), "{took:?}");
        // A deadline that passed fires at once.
        t.set(start).unwrap();
        tokio::time::timeout(Duration::from_secs(1), t.wait())
            .await
            .expect("fires at once")
            .unwrap();
    }
}
