//! Finding the coordinator.

use lanmesh_proto::DEFAULT_COORDINATOR_PORT;
use std::net::SocketAddr;
use std::time::Duration;
use tracing::warn;

/// `HOST[:PORT]` with the default port filled in (IPv6 literals may be bare or bracketed).
pub fn coordinator_target(text: &str) -> String {
    if text.parse::<SocketAddr>().is_ok() {
        return text.to_string();
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return SocketAddr::new(ip, DEFAULT_COORDINATOR_PORT).to_string();
    }
    match text.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => text.to_string(),
        _ => format!("{text}:{DEFAULT_COORDINATOR_PORT}"),
    }
}

/// Resolves the coordinator to an IPv4 address, retrying (and saying so) until it works.
pub async fn resolve(target: &str) -> SocketAddr {
    let mut wait = Duration::from_secs(1);
    loop {
        match tokio::net::lookup_host(target).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if let Some(a) = addrs.iter().find(|a| a.is_ipv4()) {
                    return *a;
                }
                warn!(
                    "coordinator {target} has no IPv4 address; retrying in {}s",
                    wait.as_secs()
                );
            }
            Err(e) => warn!(
                "cannot resolve coordinator {target}: {e}; retrying in {}s",
                wait.as_secs()
            ),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// Sets a socket's receive or send buffer (`SO_RCVBUF` or `SO_SNDBUF`) to `bytes`, past the
/// system's limit when the process may (root: the `...FORCE` option), else as far as the limit
/// allows. Best effort: the socket works either way.
pub fn set_socket_buffer(fd: std::os::fd::RawFd, option: libc::c_int, bytes: usize) {
    let force = match option {
        libc::SO_RCVBUF => libc::SO_RCVBUFFORCE,
        libc::SO_SNDBUF => libc::SO_SNDBUFFORCE,
        other => other,
    };
    let v = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    let set = |opt| {
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(force) != 0 {
        set(option);
    }
}

#[cfg(test)]
mod tests {
    use super::coordinator_target;

    #[test]
    fn coordinator_targets_get_the_default_port() {
        assert_eq!(coordinator_target("example.net"), "example.net:3478");
        assert_eq!(coordinator_target("example.net:9"), "example.net:9");
        assert_eq!(coordinator_target("203.0.113.10"), "203.0.113.10:3478");
        assert_eq!(coordinator_target("203.0.113.10:77"), "203.0.113.10:77");
        assert_eq!(coordinator_target("[2001:db8::1]:77"), "[2001:db8::1]:77");
        assert_eq!(coordinator_target("2001:db8::1"), "[2001:db8::1]:3478");
    }
}
