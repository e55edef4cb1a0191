//! Command-line plumbing shared by the lanmesh binaries.

pub mod key_file;
pub mod local_api;
pub mod net;
pub mod state_dir;
pub mod udp_batch;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Logs go to stderr; `-v` raises the level (info → debug → trace), `RUST_LOG` overrides.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// For commands that print and exit (not the daemons): a closed pipe (`node status | head`)
/// ends the process quietly, as it does for every Unix tool, instead of a panic in `println!`.
/// Daemons keep Rust's default (the signal ignored), so a closed socket is an error, not death.
pub fn exit_quietly_on_closed_pipe() {
    // SAFETY: setting a signal disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs a binary's command and turns an error into one `error: ...` line and exit code 1.
pub fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// This machine's hostname, or `fallback`.
pub fn hostname(fallback: &str) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback.into())
}

/// Parses a join key given with --auth-key (or a config file), if one was.
pub fn parse_auth_key(text: Option<String>) -> anyhow::Result<Option<lanmesh_proto::JoinKey>> {
    text.map(|t| {
        t.parse()
            .map_err(|e| anyhow::anyhow!("bad --auth-key: {e}"))
    })
    .transpose()
}

/// Reads a TOML config file. Errors name the file and, for syntax errors, the line.
pub fn load_config<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    match toml::from_str(&text) {
        Ok(cfg) => Ok(cfg),
        Err(e) => {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            // toml's messages may run over several lines; one sentence is enough here.
            let what = e.message().lines().collect::<Vec<_>>().join("; ");
            match line {
                Some(l) => bail!("config file {} line {l}: {what}", path.display()),
                None => bail!("config file {}: {what}", path.display()),
            }
        }
    }
}

/// Prints an aligned table: every column as wide as its widest cell (so long names never
/// break it), columns from `right_from` on right-aligned (numbers).
pub fn print_table(header: &[&str], rows: &[Vec<String>], right_from: usize) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            let pad = " ".repeat(w - cell.chars().count());
            if i >= right_from {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
            line.push_str("  ");
        }
        println!("{}", line.trim_end());
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parses `90s`, `30m`, `24h`, `7d` (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?} has an unknown unit; use s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("").is_err());
    }

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[allow(dead_code)]
        port: Option<u16>,
    }

    #[test]
    fn config_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("lm-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "# comment\n\nport = \"x\"\n").unwrap();
        let e = load_config::<Cfg>(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        std::fs::write(&path, "port = 5\n").unwrap();
        assert!(load_config::<Cfg>(Some(&path)).is_ok());
        assert!(load_config::<Cfg>(Some(&dir.join("missing.toml")))
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
