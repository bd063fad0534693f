//! Process CPU time and memory (Linux): CPU seconds from the process's CPU
//! clock (nanoseconds, every thread including those that have exited), with
//! `/proc/<pid>/stat` (10 ms clock ticks) as the fallback; resident set size
//! from `/proc/<pid>/status`.
//!
//! Why the clock: an idle fleet's collector uses ~27 clock ticks in a 60 s
//! window, so one tick is ~4 % of the figure and runs of one build differed
//! by 3 ticks; the CPU clock reads the scheduler's own runtime in nanoseconds.

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

/// CPU seconds the process has used so far (all its threads, user and
/// system), from its CPU clock; from `/proc/<pid>/stat` where the clock
/// cannot be read.
pub fn cpu_seconds(pid: Pid) -> anyhow::Result<f64> {
    cpu_reading(pid).map(|(s, _)| s)
}

/// [`cpu_seconds`] with the source it read, for the report:
/// `"cpu clock (ns)"` or `"clock ticks"`.
pub fn cpu_reading(pid: Pid) -> anyhow::Result<(f64, &'static str)> {
    match cpu_clock_seconds(pid) {
        Some(s) => Ok((s, "cpu clock (ns)")),
        None => Ok((cpu_tick_seconds(pid)?, "clock ticks")),
    }
}

/// The process's CPU clock (`clock_getcpuclockid` + `clock_gettime`): the
/// scheduler's runtime of all its threads, living and exited, in nanoseconds.
fn cpu_clock_seconds(pid: Pid) -> Option<f64> {
    let clock = match pid {
        Pid::This => libc::CLOCK_PROCESS_CPUTIME_ID,
        Pid::Other(p) => {
            let mut clock: libc::clockid_t = 0;
            let p = libc::pid_t::try_from(p).ok()?;
            // SAFETY: writes the clock id into a local we own.
            if unsafe { libc::clock_getcpuclockid(p, &mut clock) } != 0 {
                return None;
            }
            clock
        }
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the time into a local we own.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// utime + stime from `/proc/<pid>/stat`, in seconds (10 ms resolution).
fn cpu_tick_seconds(pid: Pid) -> anyhow::Result<f64> {
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

    /// A child that spins for a while: its CPU clock agrees with its clock
    /// ticks (within two ticks) and resolves finer than a tick.
    #[test]
    fn the_cpu_clock_of_another_process_agrees_with_its_ticks() {
        use std::io::BufRead;
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo done; sleep 5",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::Other(child.id());
        // The loop is over once it says so; the child then sleeps.
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "done");
        let clock = cpu_clock_seconds(pid).expect("the child's CPU clock");
        let ticks = cpu_tick_seconds(pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(clock > 0.01, "the loop used {clock} s");
        let tick = 1.0 / clock_ticks_per_second();
        assert!(
            (clock - ticks).abs() <= 2.0 * tick,
            "clock {clock} s, ticks {ticks} s"
        );
        // Nanoseconds: not a whole number of ticks (a 1-in-10^7 chance).
        assert!((clock / tick).fract() != 0.0, "clock {clock} s");
    }
}
