//! What benchmarks measure: medians, CPU ticks.

/// Sorts `times` and gives their median (None when empty).
pub fn median(times: &mut [f64]) -> Option<f64> {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(times[n / 2]),
        _ => Some((times[n / 2 - 1] + times[n / 2]) / 2.0),
    }
}

/// Clock ticks a second (the unit of [`cpu_ticks`]).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of process `pid` (all threads), in clock ticks; 0 if it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let (user, system) = cpu_ticks_split(pid);
    user + system
}

/// utime and stime of process `pid` (all threads), in clock ticks; 0 if it is gone.
pub fn cpu_ticks_split(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after "(comm)": state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return (0, 0);
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field(14), field(15))
}
