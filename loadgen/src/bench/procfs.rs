//! Process CPU time and memory from `/proc` (Linux): user+system CPU seconds
//! from `/proc/<pid>/stat`, resident set size from `/proc/<pid>/status`.

use anyhow::{anyhow, Context};

/// Which process to look at.
#[derive(Debug, Clone, Copy)]
pub enum Pid {
    /// The bench process itself.
    This,
    /// Another process.
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::This => "/proc/self".to_string(),
            Pid::Other(p) => format!("/proc/{p}"),
        }
    }
}

/// Clock ticks per second (`getconf CLK_TCK`), the unit of utime/stime.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds the process has used so far (all its threads).
pub fn cpu_seconds(pid: Pid) -> anyhow::Result<f64> {
    let path = format!("{}/stat", pid.dir());
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| anyhow!("unexpected {path}: {stat}"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may contain spaces, so the
/// fields are counted after the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": field 3 (state) is index 0, so utime (14) is index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Current resident set size (VmRSS) in KiB.
pub fn rss_kib(pid: Pid) -> anyhow::Result<u64> {
    let path = format!("{}/status", pid.dir());
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&status, "VmRSS:").ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

/// The value in KiB of a `Name:   123 kB` line of `/proc/<pid>/status`.
pub fn parse_status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The soft limit on open files of this process (children inherit it).
pub fn open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if r == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

/// Raises the soft open-files limit to the hard limit (children inherit it).
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat =
            "1234 (opc coll) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn parses_status_lines() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn reads_our_own_process() {
        assert!(cpu_seconds(Pid::This).unwrap() >= 0.0);
        assert!(rss_kib(Pid::This).unwrap() > 0);
    }
}
