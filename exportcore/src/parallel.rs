//! An ordered, bounded parallel map on plain threads, for CPU-bound per-batch work (parsing,
//! canonicalising) inside a blocking profile. Results are consumed in input order, at most
//! `2 × workers` items are in flight (so memory stays bounded), and the first error stops
//! everything.
//!
//! ```
//! let mut out = Vec::new();
//! exportcore::parallel::ordered_map(
//!     (1..=100u64).map(Ok),
//!     4,
//!     |x| Ok(x * x),
//!     |y| { out.push(y); Ok(()) },
//! )?;
//! assert_eq!(out, (1..=100u64).map(|x| x * x).collect::<Vec<_>>());
//! # Ok::<(), exportcore::ExportError>(())
//! ```

use crate::error::{ExportError, Result};
use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;

static WORKERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The worker threads one export uses for its parallel stages (canonicalisation, compression):
/// the available cores, or what [`set_default_workers`] set. Outputs never depend on it.
pub fn default_workers() -> usize {
    match WORKERS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Caps the worker threads of every export in this process (0 restores the default). A server
/// uses it to keep cores for its API (`exportctl serve --export-threads`).
pub fn set_default_workers(n: usize) {
    WORKERS.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// Maps `input` through `map` on `workers` threads and feeds the results, in input order, to
/// `consume` on the calling thread. With `workers <= 1` everything runs on the calling thread.
pub fn ordered_map<I, T, U, F, G>(input: I, workers: usize, map: F, mut consume: G) -> Result<()>
where
    I: Iterator<Item = Result<T>> + Send,
    T: Send,
    U: Send,
    F: Fn(T) -> Result<U> + Sync,
    G: FnMut(U) -> Result<()>,
{
    if workers <= 1 {
        for item in input {
            consume(map(item?)?)?;
        }
        return Ok(());
    }
    let in_flight = workers * 2;
    let (job_tx, job_rx) = sync_channel::<(u64, T)>(in_flight);
    let (res_tx, res_rx) = sync_channel::<(u64, Result<U>)>(in_flight);
    let (token_tx, token_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = token_tx.send(());
    }
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|scope| {
        // Producer: reads input while tokens allow.
        let producer_res = res_tx.clone();
        scope.spawn(move || {
            for (seq, item) in (0u64..).zip(input) {
                if token_rx.recv().is_err() {
                    return;
                }
                match item {
                    Ok(t) => {
                        if job_tx.send((seq, t)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = producer_res.send((seq, Err(e)));
                        return;
                    }
                }
            }
        });
        let job_rx = &job_rx;
        let map = &map;
        for _ in 0..workers {
            let res_tx = res_tx.clone();
            scope.spawn(move || loop {
                let job = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((seq, t)) = job else { return };
                if res_tx.send((seq, map(t))).is_err() {
                    return;
                }
            });
        }
        drop(res_tx);
        consume_in_order(res_rx, token_tx, &mut consume)
    })
}

/// Consumes results in order. Returning drops `res_rx` and `token_tx`, which ends the
/// producer and the workers even when stopping early on an error.
fn consume_in_order<U>(
    res_rx: Receiver<(u64, Result<U>)>,
    token_tx: std::sync::mpsc::SyncSender<()>,
    consume: &mut impl FnMut(U) -> Result<()>,
) -> Result<()> {
    let mut next = 0u64;
    let mut pending: BTreeMap<u64, Result<U>> = BTreeMap::new();
    for (seq, res) in res_rx.iter() {
        pending.insert(seq, res);
        while let Some(res) = pending.remove(&next) {
            consume(res?)?;
            next += 1;
            let _ = token_tx.send(());
        }
    }
    // All senders are gone: anything still pending is past a gap that can never fill, which
    // only happens after a panic in `map`.
    if pending.is_empty() {
        Ok(())
    } else {
        Err(ExportError::internal("parallel map", "a worker stopped unexpectedly"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preserves_order_under_uneven_work() {
        let mut out = Vec::new();
        ordered_map(
            (0..500u64).map(Ok),
            3,
            |x| {
                if x % 7 == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                Ok(x + 1)
            },
            |y| {
                out.push(y);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(out, (1..=500).collect::<Vec<_>>());
    }

    #[test]
    fn first_error_wins_and_stops() {
        for workers in [1, 4] {
            let mut seen = 0;
            let err = ordered_map(
                (0..10_000u64).map(Ok),
                workers,
                |x| if x == 50 { Err(ExportError::Cancelled) } else { Ok(x) },
                |_| {
                    seen += 1;
                    Ok(())
                },
            )
            .unwrap_err();
            assert_eq!(err.code(), "ERR_EXPORT_CANCELLED");
            assert_eq!(seen, 50);
            let err = ordered_map(
                (0..100u64).map(|x| if x == 3 { Err(ExportError::NotFound { path: "x".into() }) } else { Ok(x) }),
                workers,
                Ok,
                |_| Ok(()),
            )
            .unwrap_err();
            assert_eq!(err.code(), "ERR_EXPORT_NOT_FOUND");
            let err = ordered_map((0..100u64).map(Ok), workers, Ok, |x| {
                if x == 10 {
                    Err(ExportError::Cancelled)
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
            assert_eq!(err.code(), "ERR_EXPORT_CANCELLED");
        }
    }
}
