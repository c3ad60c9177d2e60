//! What keeps a replica going: its heartbeat, sweeping the leases of replicas that are gone,
//! pruning, recounting the backlog, and the LISTEN connection.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::queue::{self, Requeue};
use super::{DbError, Inner, NOW_MS};
use crate::rows::{channel_named, duration_ms};

/// Every this many heartbeats, the backlog of every channel is counted again (what other replicas
/// enqueued and settled).
const RECOUNT_EVERY: u32 = 4;
/// Prune steps per heartbeat at most (each deletes up to 1 000 deliveries).
const PRUNE_STEPS: usize = 20;

/// Renews this replica's heartbeat (registering it again if it was swept), and learns whether
/// other replicas are alive.
pub(super) async fn heartbeat(inner: &Inner) -> Result<(), DbError> {
    sqlx::query(&format!(
        "INSERT INTO replicas (id, started_at, heartbeat_at) VALUES ($1, {NOW_MS}, {NOW_MS}) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
    ))
    .bind(&inner.replica)
    .execute(&inner.pool)
    .await?;
    let peers: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM replicas WHERE id <> $1 AND heartbeat_at >= {NOW_MS} - $2"
    ))
    .bind(&inner.replica)
    .bind(duration_ms(inner.lease))
    .fetch_one(&inner.pool)
    .await?;
    inner.peers.store(peers > 0, Ordering::Relaxed);
    Ok(())
}

/// Counts the unsettled deliveries of every channel (the capacity check's starting point).
pub(super) async fn recount(inner: &Inner) -> Result<(), DbError> {
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT channel, count(*) FROM deliveries WHERE state IN (0, 1, 4) GROUP BY channel")
            .fetch_all(&inner.pool)
            .await?;
    let mut live = inner.live.lock().unwrap_or_else(PoisonError::into_inner);
    live.clear();
    for (channel, n) in counts {
        live.insert(channel_named(&channel), n);
    }
    Ok(())
}

/// Removes the replicas whose heartbeat is older than the lease and puts their in-flight
/// deliveries (and any without a live owner) back to pending.
async fn sweep(inner: &Inner) -> Result<usize, DbError> {
    let gone: Vec<String> = sqlx::query_scalar(&format!(
        "DELETE FROM replicas WHERE id <> $1 AND heartbeat_at < {NOW_MS} - $2 RETURNING id"
    ))
    .bind(&inner.replica)
    .bind(duration_ms(inner.lease))
    .fetch_all(&inner.pool)
    .await?;
    for replica in &gone {
        tracing::warn!(%replica, "a replica stopped renewing its lease; its in-flight deliveries go back to pending");
    }
    queue::requeue(inner, Requeue::Abandoned).await
}

/// Every quarter of the lease until the outbox is dropped: heartbeat, sweep, orphaned claims,
/// pruning, and every few beats a recount. Failures are logged and tried again next time.
pub(super) async fn maintenance(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let every = (inner.lease / 4).max(Duration::from_millis(100));
    let mut beat: u32 = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        beat = beat.wrapping_add(1);
        if let Err(e) = heartbeat(&inner).await {
            tracing::warn!(error = %inner.message("renew this replica's lease", &e), "heartbeat failed");
            continue;
        }
        match sweep(&inner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deliveries = n,
                "in-flight deliveries of a stopped replica are pending again"
            ),
            Err(e) => {
                tracing::warn!(error = %inner.message("sweep expired leases", &e), "lease sweep failed")
            }
        }
        match queue::requeue(&inner, Requeue::Orphaned).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(deliveries = n, "claims whose answer was lost are pending again"),
            Err(e) => tracing::warn!(error = %inner.message("recover lost claims", &e), "recovery failed"),
        }
        for _ in 0..PRUNE_STEPS {
            match queue::prune(&inner, inner.retention).await {
                Ok(n) if n >= queue::PRUNE_BATCH => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %inner.message("prune delivered deliveries", &e), "pruning failed");
                    break;
                }
            }
        }
        if beat.is_multiple_of(RECOUNT_EVERY)
            && let Err(e) = recount(&inner).await
        {
            tracing::warn!(error = %inner.message("count the pending deliveries", &e), "recount failed");
        }
    }
}

/// A LISTEN connection on the replica's two topics.
pub(super) async fn listen(inner: &Inner) -> Result<PgListener, DbError> {
    let mut listener = PgListener::connect_with(&inner.pool).await?;
    listener.listen(&inner.work_topic).await?;
    listener.listen(&inner.instances_topic).await?;
    Ok(listener)
}

/// Turns notifications into wake-ups: new work wakes the workers of its channel; an instance
/// change bumps [`Store::changes`](crate::Store::changes). When the connection was lost (and
/// notifications with it), everything is woken once it is back.
pub(super) async fn listener(inner: Arc<Inner>, mut listening: PgListener, mut stop: watch::Receiver<bool>) {
    loop {
        let next = tokio::select! {
            next = listening.try_recv() => next,
            _ = stop.changed() => return,
        };
        match next {
            Ok(Some(notification)) => {
                if notification.channel() == inner.work_topic {
                    inner
                        .notifier(channel_named(notification.payload()))
                        .notify_waiters();
                } else {
                    inner.changes.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Ok(None) => {
                // Reconnected: what was sent meanwhile is lost.
                inner.wake_all();
                inner.changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            Err(e) => {
                tracing::warn!(error = %inner.message("LISTEN for notifications", &DbError::Db(e)), "retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}
