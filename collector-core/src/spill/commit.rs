//! Group commit: many appenders, one fsync. The fsync is what an append
//! costs (milliseconds against microseconds for the write), so appenders
//! that wait at the same time share it.
//!
//! Each appender writes under the store's lock, then calls
//! [`GroupCommit::wait_durable`] with its id. If no sync is running, it
//! becomes the leader: it asks the store for the newest id written and a
//! handle to sync, syncs without holding the store's lock (others keep
//! writing), publishes the new durable id and wakes everyone. Appenders
//! whose id the sync covered return; the others lead or join the next one.
//! A failed sync poisons the commit: later waits fail. So does a leader
//! that panics in `prepare` or `sync`: without that, `syncing` would stay
//! set and every later appender would wait forever.

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::SpillError;

#[derive(Debug)]
struct State {
    /// Every id up to this one is durable.
    durable: u64,
    syncing: bool,
    failed: bool,
}

/// Shares syncs between concurrent appenders.
#[derive(Debug)]
pub struct GroupCommit {
    state: Mutex<State>,
    cv: Condvar,
}

impl GroupCommit {
    /// Starts with every id up to `durable` durable.
    pub fn new(durable: u64) -> Self {
        Self {
            state: Mutex::new(State {
                durable,
                syncing: false,
                failed: false,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Whether a sync has failed.
    pub fn failed(&self) -> bool {
        self.lock().failed
    }

    /// Blocks until `id` is durable. `prepare` (called by a leader) returns
    /// the newest id written so far and what to sync; `sync` makes it
    /// durable.
    pub fn wait_durable<S>(
        &self,
        id: u64,
        prepare: impl FnOnce() -> Result<(u64, S), SpillError>,
        sync: impl FnOnce(S) -> Result<(), SpillError>,
    ) -> Result<(), SpillError> {
        let mut st = self.lock();
        loop {
            if st.failed {
                return Err(SpillError::Poisoned);
            }
            if st.durable >= id {
                return Ok(());
            }
            if !st.syncing {
                break;
            }
            self.cv.wait(&mut st);
        }
        st.syncing = true;
        drop(st);
        // Until disarmed, a panic in `prepare` or `sync` ends the sync as
        // failed and wakes the waiters (see `LeaderGuard`).
        let guard = LeaderGuard { commit: self };
        let result = prepare().and_then(|(target, s)| sync(s).map(|()| target));
        std::mem::forget(guard);
        let mut st = self.lock();
        st.syncing = false;
        let out = match result {
            Ok(target) => {
                st.durable = st.durable.max(target);
                Ok(())
            }
            Err(e) => {
                st.failed = true;
                Err(e)
            }
        };
        drop(st);
        self.cv.notify_all();
        out
    }
}

/// Held by a sync's leader while it syncs; dropped only when the leader
/// unwinds. Then the sync is over and failed: nothing it covered can be
/// called durable, and waiters must not wait for it forever.
struct LeaderGuard<'a> {
    commit: &'a GroupCommit,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.commit.lock();
        st.syncing = false;
        st.failed = true;
        drop(st);
        self.commit.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn concurrent_waiters_share_syncs() {
        let gc = Arc::new(GroupCommit::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let syncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gc, written, syncs) = (gc.clone(), written.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let id = written.fetch_add(1, Ordering::SeqCst) + 1;
                        gc.wait_durable(
                            id,
                            || Ok((written.load(Ordering::SeqCst), ())),
                            |()| {
                                syncs.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_micros(200));
                                Ok(())
                            },
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(syncs.load(Ordering::SeqCst) < 800);
    }

    /// A leader that panics in `sync` must not leave `syncing` set: the
    /// next appender gets an error at once instead of waiting forever.
    #[test]
    fn a_panicking_sync_fails_later_waits_instead_of_hanging() {
        let gc = Arc::new(GroupCommit::new(0));
        let leader = gc.clone();
        let panicked = std::thread::spawn(move || {
            leader.wait_durable(
                1,
                || Ok((1, ())),
                |()| -> Result<(), SpillError> { panic!("fsync implementation panicked") },
            )
        })
        .join();
        assert!(panicked.is_err());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = gc.clone();
        std::thread::spawn(move || {
            let _ = tx.send(waiter.wait_durable(2, || Ok((2, ())), |()| Ok(())));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("a wait after a panicked sync hung");
        assert!(matches!(r, Err(SpillError::Poisoned)), "{r:?}");
        assert!(gc.failed());
    }

    /// Same for a panic in `prepare`.
    #[test]
    fn a_panicking_prepare_fails_later_waits() {
        let gc = Arc::new(GroupCommit::new(0));
        let leader = gc.clone();
        let joined = std::thread::spawn(move || {
            leader.wait_durable(
                1,
                || -> Result<(u64, ()), SpillError> { panic!("prepare panicked") },
                |()| Ok(()),
            )
        })
        .join();
        assert!(joined.is_err());
        assert!(matches!(
            gc.wait_durable(1, || Ok((1, ())), |()| Ok(())),
            Err(SpillError::Poisoned)
        ));
    }

    #[test]
    fn failed_sync_poisons() {
        let gc = GroupCommit::new(0);
        let r = gc.wait_durable(
            1,
            || Ok((1, ())),
            |()| {
                Err(SpillError::io(
                    std::path::Path::new("x"),
                    std::io::Error::other("boom"),
                ))
            },
        );
        assert!(r.is_err());
        assert!(matches!(
            gc.wait_durable(1, || Ok((1, ())), |()| Ok(())),
            Err(SpillError::Poisoned)
        ));
    }
}
