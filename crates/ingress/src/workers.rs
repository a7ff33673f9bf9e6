//! Proxy workers (nginx's layout): [`IngressConfig::workers`](crate::IngressConfig::workers)
//! threads, each with its own single-threaded tokio runtime, its own accept loop on its own
//! copy of every listener (`try_clone`: one socket and one accept queue, so the restart
//! handover is unchanged) and its own upstream connection pools. A connection, its requests
//! and the upstream connections they use live on one thread: no cross-thread wake-up, no
//! work stealing, no pool lock shared between threads.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::IngressError;

thread_local! {
    /// The index of the worker running on this thread (0 elsewhere).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The index of the proxy worker running on this thread; 0 on any other thread (tests calling
/// the service directly, the agent's runtime), which then uses worker 0's pools.
pub(crate) fn current() -> usize {
    WORKER.get()
}

/// A started worker thread.
pub(crate) struct Worker {
    pub(crate) index: usize,
    /// Its answer once its listeners are registered (or why they could not be).
    pub(crate) ready: oneshot::Receiver<Result<(), IngressError>>,
    /// Closed when the thread has ended (its runtime, and every task on it, dropped).
    pub(crate) done: oneshot::Receiver<()>,
}

/// Starts worker `index` on a thread of its own, running the future `run` makes on a
/// current-thread runtime. `run` gets the sender on which it reports being ready.
pub(crate) fn spawn<F, Fut>(index: usize, run: F) -> Result<Worker, IngressError>
where
    F: FnOnce(oneshot::Sender<Result<(), IngressError>>) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (ready_tx, ready) = oneshot::channel();
    let (done_tx, done) = oneshot::channel::<()>();
    // The workers log where the task that started them logs (tests capture per thread).
    let logs = tracing::dispatcher::get_default(Clone::clone);
    std::thread::Builder::new()
        .name(format!("ingress-{index}"))
        .spawn(move || {
            // Declared first, dropped last: after the runtime and its tasks.
            let _done = done_tx;
            let _logs = tracing::dispatcher::set_default(&logs);
            WORKER.set(index);
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(source) => {
                    let _ = ready_tx.send(Err(IngressError::Worker { index, source }));
                    return;
                }
            };
            runtime.block_on(run(ready_tx));
        })
        .map_err(|source| IngressError::Worker { index, source })?;
    Ok(Worker { index, ready, done })
}

/// A worker with this many open connections more than the least busy one lets the others
/// accept first.
const BALANCE_SLACK: usize = 2;
/// How long a worker that is ahead waits before accepting anyway (another worker, woken by
/// the same connection, normally takes it meanwhile; if none does, nothing waits longer).
pub(crate) const LET_OTHERS_ACCEPT: Duration = Duration::from_millis(1);

/// Open downstream connections per worker. All workers wait on the same accept queue and
/// every one of them is woken by a new connection; without this, whichever is idle at that
/// instant takes it, which can pile a burst of long-lived keep-alive connections on one
/// thread (nginx's `accept_mutex` / `ngx_accept_disabled` solve the same problem).
#[derive(Debug)]
pub(crate) struct Load {
    open: Box<[AtomicUsize]>,
}

impl Load {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            open: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Whether worker `index` has more than [`BALANCE_SLACK`] connections more than the least
    /// busy worker.
    pub(crate) fn ahead(&self, index: usize) -> bool {
        let count = |c: &AtomicUsize| c.load(Ordering::Relaxed);
        let Some(mine) = self.open.get(index).map(count) else {
            return false;
        };
        let least = self.open.iter().map(count).min().unwrap_or(0);
        mine > least + BALANCE_SLACK
    }

    /// Counts a connection of worker `index` as open until the guard is dropped.
    pub(crate) fn open(self: &Arc<Self>, index: usize) -> OpenConnection {
        if let Some(c) = self.open.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        OpenConnection {
            load: Arc::clone(self),
            index,
        }
    }
}

/// One open connection of a worker (see [`Load`]).
#[derive(Debug)]
pub(crate) struct OpenConnection {
    load: Arc<Load>,
    index: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(c) = self.load.open.get(self.index) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_well_ahead_of_the_least_busy_lets_the_others_accept() {
        let load = Arc::new(Load::new(3));
        let first: Vec<_> = (0..2).map(|_| load.open(0)).collect();
        assert!(!load.ahead(0), "2 ahead of 0 is within the slack");
        let third = load.open(0);
        assert!(load.ahead(0));
        assert!(!load.ahead(1) && !load.ahead(2));
        let _other = load.open(1);
        assert!(load.ahead(0), "worker 2 still has none");
        drop(third);
        assert!(!load.ahead(0));
        drop(first);
        assert!(!load.ahead(1), "1 connection: within the slack");
    }
}
