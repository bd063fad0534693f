//! The worker pool: a semaphore that bounds how many device reads run at
//! once. A device's schedule waits for a permit (backpressure) rather than
//! queueing work, so a slow fleet shows up as schedule lateness, never as
//! unbounded memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::names;

#[derive(Clone)]
pub(crate) struct WorkerPool {
    sem: Arc<Semaphore>,
    permits: usize,
    /// Registered once: no registry look-up per read.
    in_use: metrics::Gauge,
}

/// A held permit; gives itself back (and updates the gauge) on drop.
pub(crate) struct Permit {
    _permit: OwnedSemaphorePermit,
    pool: WorkerPool,
}

impl WorkerPool {
    pub(crate) fn new(permits: usize) -> Self {
        metrics::gauge!(names::WORKER_PERMITS).set(permits as f64);
        Self {
            sem: Arc::new(Semaphore::new(permits)),
            permits,
            in_use: metrics::gauge!(names::WORKER_PERMITS_IN_USE),
        }
    }

    /// Waits for a permit. Returns None only if the pool was closed.
    pub(crate) async fn acquire(&self) -> Option<Permit> {
        let permit = self.sem.clone().acquire_owned().await.ok()?;
        self.publish();
        Some(Permit {
            _permit: permit,
            pool: self.clone(),
        })
    }

    fn publish(&self) {
        let in_use = self.permits - self.sem.available_permits();
        self.in_use.set(in_use as f64);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // The permit is returned after this body; count it as free already.
        let in_use = self.pool.permits - self.pool.sem.available_permits() - 1;
        self.pool.in_use.set(in_use as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounds_concurrency() {
        let pool = WorkerPool::new(2);
        let a = pool.acquire().await.unwrap();
        let _b = pool.acquire().await.unwrap();
        let third =
            tokio::time::timeout(std::time::Duration::from_millis(50), pool.acquire()).await;
        assert!(third.is_err(), "a third permit must wait");
        drop(a);
        let third =
            tokio::time::timeout(std::time::Duration::from_millis(50), pool.acquire()).await;
        assert!(third.is_ok());
    }
}
