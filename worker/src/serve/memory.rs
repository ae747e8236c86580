//! Memory limits of client queries: each query may use `query.memory_limit_mb`, and all
//! the client queries of one worker together `query.worker_memory_limit_mb`. DataFusion
//! gives a session one pool; [`QueryPool`] is a query's pool that draws on the worker's
//! shared one, refusing growth past either limit with `ResourcesExhausted`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The memory shared by one worker's client queries.
#[derive(Debug, Clone)]
pub struct WorkerMemory {
    pool: Arc<GreedyMemoryPool>,
    limit: usize,
}

impl WorkerMemory {
    /// `limit` bytes for all client queries together.
    pub fn new(limit: usize) -> Self {
        Self {
            pool: Arc::new(GreedyMemoryPool::new(limit)),
            limit,
        }
    }

    /// Bytes the client queries hold now.
    pub fn reserved(&self) -> usize {
        self.pool.reserved()
    }

    /// A pool for one query of at most `limit` bytes.
    pub fn query(&self, limit: usize) -> Arc<QueryPool> {
        Arc::new(QueryPool {
            worker: self.clone(),
            limit,
            used: AtomicUsize::new(0),
        })
    }
}

/// One query's memory, drawn from its worker's.
#[derive(Debug)]
pub struct QueryPool {
    worker: WorkerMemory,
    limit: usize,
    used: AtomicUsize,
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query pool: {} of {} bytes",
            self.used.load(Ordering::Relaxed),
            self.limit
        )
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "smelter query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.worker.pool.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.worker.pool.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.worker.pool.grow(reservation, additional);
        self.used.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.worker.pool.shrink(reservation, shrink);
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let limit = self.limit;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + additional <= limit).then_some(used + additional)
            })
            .map_err(|used| {
                DataFusionError::ResourcesExhausted(format!(
                    "the query would use more than its {} MiB (query.memory_limit_mb; it holds \
                     {} MiB and asked for {} more)",
                    limit >> 20,
                    used >> 20,
                    (additional >> 20).max(1)
                ))
            })?;
        if let Err(error) = self.worker.pool.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the worker's client queries would use more than their {} MiB together \
                 (query.worker_memory_limit_mb): {error}",
                self.worker.limit >> 20
            )));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}
