//! argon2 verification on a bounded pool of blocking threads.
//!
//! argon2 is deliberately slow (~20 ms and 19 MiB per verification at OWASP parameters),
//! so it never runs on the async workers that answer cached validations: a semaphore
//! admits `workers` verifications at a time onto tokio's blocking threads, and at most
//! `max_queue` more may wait. Beyond that the caller is told the service is overloaded
//! right away instead of queueing without bound.
//!
//! The permit moves into the blocking task, so a request that times out and drops its
//! future does not free a worker slot while its argon2 run is still going.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use patrol_api::token::{self, TokenHasher};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("argon2 queue is full ({0} waiting)")]
    Overloaded(usize),
    #[error("argon2 worker failed")]
    WorkerFailed,
}

pub struct VerifyPool {
    permits: Arc<Semaphore>,
    workers: usize,
    waiting: AtomicUsize,
    max_queue: usize,
    hasher: TokenHasher,
    metrics: Arc<Metrics>,
}

impl VerifyPool {
    /// `workers` concurrent verifications (at least one), `max_queue` waiting.
    pub fn new(workers: usize, max_queue: usize, metrics: Arc<Metrics>) -> Self {
        let workers = workers.max(1);
        Self {
            permits: Arc::new(Semaphore::new(workers)),
            workers,
            waiting: AtomicUsize::new(0),
            max_queue,
            hasher: TokenHasher::default(),
            metrics,
        }
    }

    /// Default worker count: all cores but one (at least one), so a flood of cold
    /// validations leaves a core to the async workers serving cached ones.
    pub fn default_workers() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Verifies `presented` (a whole token, already format-checked) against `phc`.
    pub async fn verify(
        &self,
        presented: Zeroizing<String>,
        phc: Arc<str>,
    ) -> Result<bool, PoolError> {
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        self.metrics
            .argon2_queue_depth
            .set(i64::try_from(queued + 1).unwrap_or(i64::MAX));
        let waiting = WaitingGuard { pool: self };
        if queued >= self.max_queue {
            return Err(PoolError::Overloaded(queued));
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::WorkerFailed)?;
        drop(waiting);
        let hasher = self.hasher.clone();
        let metrics = self.metrics.clone();
        metrics.argon2_in_flight.inc();
        let result = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let ok = match token::parse(&presented) {
                Ok(parsed) => hasher.verify(&parsed, &phc),
                Err(_) => false,
            };
            metrics
                .argon2_duration
                .observe(started.elapsed().as_secs_f64());
            metrics.argon2_in_flight.dec();
            drop(permit);
            ok
        })
        .await;
        result.map_err(|_| PoolError::WorkerFailed)
    }
}

/// Counts a caller as waiting until it gets a worker or gives up (its future dropped).
struct WaitingGuard<'a> {
    pool: &'a VerifyPool,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        let before = self.pool.waiting.fetch_sub(1, Ordering::AcqRel);
        self.pool
            .metrics
            .argon2_queue_depth
            .set(i64::try_from(before.saturating_sub(1)).unwrap_or(i64::MAX));
    }
}

impl VerifyPool {
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patrol_api::token::{HashParams, generate};

    fn fast() -> TokenHasher {
        TokenHasher::new(HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn verifies_right_and_wrong_tokens() {
        let pool = VerifyPool::new(1, 8, Arc::new(Metrics::default()));
        let t = generate().unwrap();
        let phc: Arc<str> = fast().hash(&t).unwrap().into();
        assert_eq!(
            pool.verify(Zeroizing::new(t.expose_secret().to_owned()), phc.clone())
                .await,
            Ok(true)
        );
        let other = generate().unwrap();
        assert_eq!(
            pool.verify(
                Zeroizing::new(other.expose_secret().to_owned()),
                phc.clone()
            )
            .await,
            Ok(false)
        );
        assert_eq!(
            pool.verify(Zeroizing::new("garbage".into()), phc).await,
            Ok(false)
        );
        assert_eq!(pool.waiting(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_immediately() {
        let pool = Arc::new(VerifyPool::new(1, 0, Arc::new(Metrics::default())));
        let t = generate().unwrap();
        let phc: Arc<str> = fast().hash(&t).unwrap().into();
        // With no queue at all, a caller arriving while nobody waits is still refused:
        // max_queue bounds waiters, and this caller would have been one.
        let result = pool
            .verify(Zeroizing::new(t.expose_secret().to_owned()), phc)
            .await;
        assert_eq!(result, Err(PoolError::Overloaded(0)));
        assert_eq!(pool.waiting(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_is_bounded_by_the_worker_count() {
        let metrics = Arc::new(Metrics::default());
        let pool = Arc::new(VerifyPool::new(1, 64, metrics.clone()));
        let t = generate().unwrap();
        // Default (slow) parameters so runs overlap.
        let phc: Arc<str> = TokenHasher::default().hash(&t).unwrap().into();
        let token = t.expose_secret().to_owned();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let pool = pool.clone();
            let phc = phc.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                pool.verify(Zeroizing::new(token), phc).await
            }));
        }
        let mut max_in_flight = 0;
        while !tasks.iter().all(|t| t.is_finished()) {
            max_in_flight = max_in_flight.max(metrics.argon2_in_flight.get());
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(true));
        }
        assert!(
            max_in_flight <= 1,
            "{max_in_flight} verifications ran at once"
        );
        assert_eq!(pool.waiting(), 0);
    }
}
