//! Names through /etc/hosts (machines without systemd-resolved): a block between two marker
//! lines, one per mesh interface, at the end of the file:
//!
//! ```text
//! # lanmesh lanmesh0 begin (written by `node up`; do not edit)
//! 100.64.0.1 alice.mesh alice
//! 100.64.0.2 bob.mesh bob
//! # lanmesh lanmesh0 end
//! ```
//!
//! Lines before the block win over it (the resolver takes the first match), so a peer's bare
//! name never shadows a name the machine already had. The rest of the file is kept as it is.
//! The file is rewritten in place when a rename over it is impossible (a bind mount, as in
//! containers and `ip netns exec`).

use super::NameTable;
use std::io::Write;
use std::path::Path;

pub const HOSTS: &str = "/etc/hosts";

fn begin_marker(iface: &str) -> String {
    format!("# lanmesh {iface} begin (written by `node up`; do not edit)")
}

fn end_marker(iface: &str) -> String {
    format!("# lanmesh {iface} end")
}

/// The block for `table` (empty when the table is).
pub fn block(iface: &str, table: &NameTable) -> String {
    if table.is_empty() {
        return String::new();
    }
    let mut out = begin_marker(iface);
    out.push('\n');
    for (name, ip) in table.entries() {
        out.push_str(&format!("{ip} {} {name}\n", table.fqdn(name)));
    }
    out.push_str(&end_marker(iface));
    out.push('\n');
    out
}

/// `text` without the block of `iface` (also a block cut short by a crash: everything from
/// its begin marker to its end marker or the end of the file), then `block` appended.
pub fn replace_block(text: &str, iface: &str, block: &str) -> String {
    let begin = begin_marker(iface);
    let end = end_marker(iface);
    let mut out = String::with_capacity(text.len() + block.len());
    let mut inside = false;
    for line in text.lines() {
        if !inside && line.trim_end() == begin {
            inside = true;
        } else if inside && line.trim_end() == end {
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !block.is_empty() && !out.is_empty() && !out.ends_with("\n\n") && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(block);
    out
}

/// Writes `block` for `iface` into the hosts file at `path` (an empty block removes it).
/// Does nothing when the file would not change.
pub fn write(path: &Path, iface: &str, block: &str) -> std::io::Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let new = replace_block(&old, iface, block);
    if new == old {
        return Ok(());
    }
    // Atomically where possible: a temporary file beside it, renamed over it.
    // (Named after the interface and process: two daemons never share one.)
    let tmp = path.with_file_name(format!(
        ".{}.lanmesh-{iface}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("hosts"),
        std::process::id()
    ));
    let renamed = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(new.as_bytes())?;
        f.sync_all()?;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions())
            .unwrap_or_else(|_| std::os::unix::fs::PermissionsExt::from_mode(0o644));
        std::fs::set_permissions(&tmp, mode)?;
        std::fs::rename(&tmp, path)
    })();
    if renamed.is_ok() {
        return Ok(());
    }
    let _ = std::fs::remove_file(&tmp);
    // A bind-mounted file cannot be renamed over: rewrite it in place.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)?;
    f.write_all(new.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const HOSTS_BEFORE: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n";

    fn table(names: &[(&str, u8)]) -> NameTable {
        NameTable::new(
            "mesh",
            names
                .iter()
                .map(|(n, last)| (*n, Ipv4Addr::new(100, 64, 0, *last))),
        )
    }

    #[test]
    fn the_block_is_appended_replaced_and_removed() {
        let b1 = block("lm0", &table(&[("bob", 2), ("alice", 1)]));
        assert_eq!(
            b1,
            "# lanmesh lm0 begin (written by `node up`; do not edit)\n\
             100.64.0.1 alice.mesh alice\n\
             100.64.0.2 bob.mesh bob\n\
             # lanmesh lm0 end\n"
        );
        let with = replace_block(HOSTS_BEFORE, "lm0", &b1);
        assert_eq!(with, format!("{HOSTS_BEFORE}{b1}"));
        // A line someone added after our block stays.
        let edited = format!("{with}192.168.1.5 printer\n");
        let b2 = block("lm0", &table(&[("alice", 1)]));
        let replaced = replace_block(&edited, "lm0", &b2);
        assert_eq!(replaced, format!("{HOSTS_BEFORE}192.168.1.5 printer\n{b2}"));
        assert_eq!(
            replace_block(&replaced, "lm0", ""),
            format!("{HOSTS_BEFORE}192.168.1.5 printer\n")
        );
        // Idempotent.
        assert_eq!(replace_block(&replaced, "lm0", &b2), replaced);
    }

    #[test]
    fn another_interfaces_block_and_a_torn_block() {
        let other = block("lm1", &table(&[("carol", 3)]));
        let ours = block("lm0", &table(&[("alice", 1)]));
        let both = replace_block(&format!("{HOSTS_BEFORE}{other}"), "lm0", &ours);
        assert_eq!(both, format!("{HOSTS_BEFORE}{other}{ours}"));
        // A crash in the middle of a write left a begin marker and no end: all of it goes.
        let torn = format!(
            "{HOSTS_BEFORE}# lanmesh lm0 begin (written by `node up`; do not edit)\n100.64.0.1 ali"
        );
        assert_eq!(replace_block(&torn, "lm0", ""), HOSTS_BEFORE);
        // A file without a final newline.
        assert_eq!(
            replace_block("127.0.0.1 localhost", "lm0", &ours),
            format!("127.0.0.1 localhost\n{ours}")
        );
    }

    #[test]
    fn writes_a_real_file_and_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lanmesh-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, HOSTS_BEFORE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let b = block("lm0", &table(&[("alice", 1)]));
        write(&path, "lm0", &b).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{HOSTS_BEFORE}{b}")
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        write(&path, "lm0", "").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), HOSTS_BEFORE);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
