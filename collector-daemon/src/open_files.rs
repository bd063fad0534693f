//! Open files: every OPC UA session holds one socket, so the process's
//! open-files limit is the daemon's ceiling on sessions. `run` raises the
//! soft limit to the hard one at start (what an unprivileged process may
//! do; distributions default the soft limit to 1,024), and `run` and
//! `validate` say how many sessions the limit allows against how many the
//! device list needs, so a replica sized past it is caught before its
//! sessions fail with `EMFILE` ("Too many open files").

use std::fmt;

/// Descriptors kept for everything but sessions: stdio, the runtime's
/// epoll and wakers, the HTTP listener and its scrapers, librdkafka's
/// sockets and pipes, the spill's and state dir's files, the registry's
/// connection, a reconnect's second socket while the first one closes.
pub(crate) const RESERVED: u64 = 256;

/// The open-files limits of this process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenFiles {
    /// The soft limit before [`raise`] (equal to `soft` when not raised).
    pub(crate) was: u64,
    /// The soft limit: what the process may open now.
    pub(crate) soft: u64,
    /// The hard limit: what the soft limit may be raised to.
    pub(crate) hard: u64,
}

impl OpenFiles {
    /// The sessions the soft limit leaves room for.
    pub(crate) fn sessions(&self) -> u64 {
        self.soft.saturating_sub(RESERVED)
    }

    /// The sessions the hard limit leaves room for (what `run` will have).
    pub(crate) fn sessions_at_hard(&self) -> u64 {
        self.hard.saturating_sub(RESERVED)
    }
}

impl fmt::Display for OpenFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "open files: soft limit {}, hard limit {}",
            self.soft, self.hard
        )
    }
}

/// The limits now, `None` where the platform has none to read.
pub(crate) fn current() -> Option<OpenFiles> {
    imp::get().map(|(soft, hard)| OpenFiles {
        was: soft,
        soft,
        hard: imp::ceiling(hard),
    })
}

/// Raises the soft limit to the hard one. Returns the limits after, or
/// `None` where there are none to read; a refusal leaves the soft limit
/// as it was (and says so in a log line).
pub(crate) fn raise() -> Option<OpenFiles> {
    let mut now = current()?;
    if now.soft < now.hard {
        match imp::set_soft(now.hard) {
            Ok(()) => now.soft = now.hard,
            Err(e) => tracing::warn!(
                error = %e,
                soft = now.soft,
                hard = now.hard,
                "cannot raise the open-files soft limit to the hard limit"
            ),
        }
    }
    Some(now)
}

#[cfg(unix)]
// `rlim_t` is u64 on Linux and macOS, not on every unix.
#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
mod imp {
    use std::io;

    /// The soft and hard `RLIMIT_NOFILE`.
    pub(super) fn get() -> Option<(u64, u64)> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into a struct we own and returns 0 on success.
        let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        (r == 0).then_some((u64::from(lim.rlim_cur), u64::from(lim.rlim_max)))
    }

    /// Sets the soft limit, keeping the hard one.
    pub(super) fn set_soft(soft: u64) -> io::Result<()> {
        let (_, hard) = get().ok_or_else(io::Error::last_os_error)?;
        let lim = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads a struct we own and returns 0 on success.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// An "unlimited" hard limit cannot be the soft limit of open files:
    /// the kernel caps it at `fs.nr_open` (Linux) or `OPEN_MAX`.
    pub(super) fn ceiling(hard: u64) -> u64 {
        if hard != libc::RLIM_INFINITY as u64 {
            return hard;
        }
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(10_240)
    }
}

#[cfg(not(unix))]
mod imp {
    pub(super) fn get() -> Option<(u64, u64)> {
        None
    }
    pub(super) fn set_soft(_: u64) -> std::io::Result<()> {
        Ok(())
    }
    pub(super) fn ceiling(hard: u64) -> u64 {
        hard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let Some(after) = raise() else { return };
        assert!(after.was <= after.soft);
        // Raised, or already there; a refusal is logged and leaves `was`.
        assert!(after.soft == after.hard || after.soft == after.was);
        let now = current().unwrap();
        assert_eq!(now.soft, after.soft);
        assert_eq!(after.sessions(), after.soft.saturating_sub(RESERVED));
    }
}
