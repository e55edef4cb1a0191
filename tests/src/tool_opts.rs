//! The command lines of the lab's small tools (`lanmesh-testkit`, `lanmesh-lan-game`):
//! `--flag value` pairs (a flag may repeat) and value-less switches. A mistake ends the tool
//! with status 2 and the usage text.

use std::net::SocketAddr;
use std::str::FromStr;

/// Prints `msg` and exits with status 2.
pub fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2);
}

pub struct Opts {
    pairs: Vec<(String, String)>,
    usage: &'static str,
}

impl Opts {
    /// Reads `args` (after the subcommand); `switches` take no value.
    pub fn parse(args: &[String], switches: &[&str], usage: &'static str) -> Opts {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if !flag.starts_with("--") {
                fail(&format!("unexpected argument {flag:?}\n{usage}"));
            }
            if switches.contains(&flag.as_str()) {
                pairs.push((flag.clone(), String::new()));
                continue;
            }
            let Some(value) = it.next() else {
                fail(&format!("{flag} needs a value\n{usage}"));
            };
            pairs.push((flag.clone(), value.clone()));
        }
        Opts { pairs, usage }
    }

    /// The last value of `flag`.
    pub fn get(&self, flag: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `flag`, in order.
    pub fn all(&self, flag: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, flag: &str) -> bool {
        self.pairs.iter().any(|(f, _)| f == flag)
    }

    pub fn required(&self, flag: &str) -> &str {
        self.get(flag)
            .unwrap_or_else(|| fail(&format!("missing {flag}\n{}", self.usage)))
    }

    pub fn num(&self, flag: &str) -> Option<u64> {
        self.get(flag).map(|v| {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{flag}: not a number: {v:?}")))
        })
    }

    /// The value of a required `flag`, parsed.
    pub fn parsed<T: FromStr>(&self, flag: &str) -> T {
        let v = self.required(flag);
        v.parse()
            .unwrap_or_else(|_| fail(&format!("{flag}: cannot read {v:?}")))
    }

    pub fn addr(&self, flag: &str) -> SocketAddr {
        parse_addr(flag, self.required(flag))
    }

    /// Every value of `flag` (at least one) as an address.
    pub fn addrs(&self, flag: &str) -> Vec<SocketAddr> {
        let all = self.all(flag);
        if all.is_empty() {
            fail(&format!("missing {flag}\n{}", self.usage));
        }
        all.into_iter().map(|v| parse_addr(flag, v)).collect()
    }
}

pub fn parse_addr(flag: &str, v: &str) -> SocketAddr {
    v.parse()
        .unwrap_or_else(|_| fail(&format!("{flag}: not an IP:PORT: {v:?}")))
}
