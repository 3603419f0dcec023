//! What a live broker holds, in words: its queues, workers and throttle
//! holders. `baton-chaos inspect` prints it, and a run whose chains did not
//! all end writes it to `stuck.txt` before it stops the broker, because a
//! stall can only be explained from the state it stalled in.

use std::fmt::Write;

/// Describes the broker at `addr`: queues, workers (with the tasks they
/// hold) and every throttle with its holders.
pub async fn describe(addr: &str) -> anyhow::Result<String> {
    let admin = baton::Client::connect(addr.to_owned()).await?.admin();
    let mut out = String::new();
    for queue in admin.list_queues().await? {
        writeln!(
            out,
            "queue {}: ready {} delayed {} throttled {} running {}",
            queue.name, queue.ready, queue.delayed, queue.throttled, queue.running
        )?;
    }
    for worker in admin.list_workers().await? {
        writeln!(
            out,
            "worker {} {:?}: {} in flight of {}{}",
            worker.worker_name,
            worker.queues,
            worker.in_flight.len(),
            worker.concurrency,
            if worker.draining { " (draining)" } else { "" }
        )?;
        for task in &worker.in_flight {
            writeln!(
                out,
                "  holds task {} attempt {}",
                task.task_id, task.attempt
            )?;
        }
    }
    for throttle in admin.list_throttles().await? {
        let identity = throttle.identity.unwrap_or_default();
        writeln!(
            out,
            "throttle {}/{}: limit {}, {} waiters (oldest {} ms)",
            identity.task_name,
            identity.key,
            throttle.limit,
            throttle.waiters,
            throttle.oldest_waiter_age_ms
        )?;
        for holder in throttle.holders {
            writeln!(
                out,
                "  held by {} task {} chain {} worker {:?} since {}",
                holder.kind, holder.task_id, holder.chain_id, holder.worker, holder.since_unix_ms
            )?;
        }
    }
    Ok(out)
}
