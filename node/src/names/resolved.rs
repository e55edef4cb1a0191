//! Names through systemd-resolved: split DNS for the mesh's domain on the mesh interface.
//! resolved sends questions for `*.<domain>` (and, through the search domain, bare names) to
//! the node's DNS responder on its mesh IP, and everything else where it did before.

use std::net::Ipv4Addr;
use std::time::Duration;

/// The `resolvectl` commands that point resolved at the responder for `domain` on `iface`.
/// `domain` (without `~`) is both a routing domain and a search domain, so `ping alice`
/// works as well as `ping alice.mesh`.
pub fn setup_commands(iface: &str, responder: Ipv4Addr, domain: &str) -> Vec<Vec<String>> {
    let cmd = |args: &[&str]| -> Vec<String> {
        std::iter::once("resolvectl")
            .chain(args.iter().copied())
            .map(String::from)
            .collect()
    };
    vec![
        cmd(&["dns", iface, &responder.to_string()]),
        cmd(&["domain", iface, domain]),
        // Our answers are not signed, and the mesh is not the place for LLMNR.
        cmd(&["dnssec", iface, "no"]),
        cmd(&["llmnr", iface, "no"]),
        // Only the mesh's domain goes to the responder, never the default route.
        cmd(&["default-route", iface, "no"]),
    ]
}

/// Undoes [`setup_commands`] (the interface's removal does too).
pub fn revert_commands(iface: &str) -> Vec<Vec<String>> {
    vec![vec!["resolvectl".into(), "revert".into(), iface.into()]]
}

/// Whether systemd-resolved serves this machine *in this network namespace*: its stub
/// resolver answers on 127.0.0.53 (a resolved of another namespace does not, so a node in a
/// container or a lab namespace never reconfigures the host's).
pub fn serves_this_machine() -> bool {
    let stub = std::net::SocketAddr::from(([127, 0, 0, 53], 53));
    std::net::TcpStream::connect_timeout(&stub, Duration::from_millis(300)).is_ok()
        && which("resolvectl")
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_route_the_domain_to_the_responder() {
        let cmds = setup_commands("lm0", Ipv4Addr::new(100, 64, 0, 5), "party");
        let lines: Vec<String> = cmds.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "resolvectl dns lm0 100.64.0.5",
                "resolvectl domain lm0 party",
                "resolvectl dnssec lm0 no",
                "resolvectl llmnr lm0 no",
                "resolvectl default-route lm0 no",
            ]
        );
        assert_eq!(revert_commands("lm0")[0].join(" "), "resolvectl revert lm0");
    }
}
