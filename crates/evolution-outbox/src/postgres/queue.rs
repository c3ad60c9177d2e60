//! Queue operations, each one transaction: claim, settle, requeue (release, recovery, lease
//! sweeps), redrive, purge, prune, and the ordering-key invariant.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::PoisonError;
use std::time::Duration;

use evolution_events::{Channel, Delivery, InstanceName};
use sqlx::{PgConnection, Row};

use super::{DbError, Inner, NOW_MS, announce, lock_id};
use crate::rows::{DELIVERY_SELECT, Decoder, channel_named, duration_ms, to_i64};
use crate::{Outcome, RedriveFilter, Settlement};

/// Delivered deliveries deleted per prune step.
pub(super) const PRUNE_BATCH: usize = 1_000;

/// How long a claim of this replica may be unknown to it (claimed by a call whose answer was lost
/// with its connection) before it goes back to pending.
const ORPHAN_AFTER_MS: i64 = 5_000;

pub(super) async fn claim(inner: &Inner, channel: Channel, limit: usize) -> Result<Vec<Delivery>, DbError> {
    let mut tx = inner.pool.begin().await?;
    let heads = sqlx::query(&format!(
        "SELECT id, okey FROM deliveries WHERE channel = $1 AND state = 0 AND due_at <= {NOW_MS} \
         ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(channel.as_str())
    .bind(to_i64(limit as u64))
    .fetch_all(&mut *tx)
    .await?;
    if heads.is_empty() {
        return Ok(Vec::new());
    }
    // Each head with its ordering key and that key's advisory-lock id.
    let heads: Vec<(i64, Option<(String, i64)>)> = heads
        .iter()
        .map(|row| {
            let okey: Option<String> = row.try_get("okey")?;
            let keyed = okey.map(|key| {
                let lock = lock_id(&inner.schema, channel.as_str(), &key);
                (key, lock)
            });
            Ok((row.try_get("id")?, keyed))
        })
        .collect::<Result<_, sqlx::Error>>()?;
    // A ready head of an ordering key is claimed only under the key's lock: a replica changing the
    // key's state (settling, redriving) holds it, and then the key is left alone this time.
    let wanted: BTreeSet<i64> = heads
        .iter()
        .filter_map(|(_, keyed)| keyed.as_ref().map(|(_, lock)| *lock))
        .collect();
    let locked: HashSet<i64> = if wanted.is_empty() {
        HashSet::new()
    } else {
        let wanted: Vec<i64> = wanted.into_iter().collect();
        sqlx::query_scalar("SELECT k FROM unnest($1::bigint[]) AS k WHERE pg_try_advisory_xact_lock(k)")
            .bind(&wanted)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    };
    let mut ids: Vec<i64> = Vec::with_capacity(limit);
    for (head, keyed) in &heads {
        if ids.len() >= limit {
            break;
        }
        let Some((key, lock)) = keyed else {
            ids.push(*head);
            continue;
        };
        if !locked.contains(lock) {
            continue;
        }
        ids.push(*head);
        let rest = limit - ids.len();
        if rest == 0 {
            continue;
        }
        // The run behind the head, in order, up to the first delivery not due yet.
        let run: Vec<(i64, bool)> = sqlx::query_as(&format!(
            "SELECT id, due_at <= {NOW_MS} FROM deliveries WHERE channel = $1 AND okey = $2 AND state = 4 \
             AND id > $3 ORDER BY id LIMIT $4 FOR UPDATE"
        ))
        .bind(channel.as_str())
        .bind(key)
        .bind(head)
        .bind(to_i64(rest as u64))
        .fetch_all(&mut *tx)
        .await?;
        ids.extend(run.iter().take_while(|(_, due)| *due).map(|(id, _)| *id));
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(&format!(
        "WITH claimed AS (UPDATE deliveries SET state = 1, owner = $2, updated_at = {NOW_MS} \
           WHERE id = ANY($1) RETURNING id) \
         {DELIVERY_SELECT} WHERE d.id IN (SELECT id FROM claimed)"
    ))
    .bind(&ids)
    .bind(&inner.replica)
    .fetch_all(&mut *tx)
    .await?;
    let mut decoder = Decoder::default();
    let mut found: HashMap<i64, Delivery> = HashMap::with_capacity(rows.len());
    let mut bad: Vec<(i64, Option<String>, String)> = Vec::new();
    for row in &rows {
        let id: i64 = row.try_get("id")?;
        match decoder.delivery(row) {
            Ok(delivery) => {
                found.insert(id, delivery);
            }
            Err(e) => bad.push((id, row.try_get("okey")?, e)),
        }
    }
    if !bad.is_empty() {
        let mut keys = BTreeSet::new();
        for (id, okey, error) in bad {
            tracing::error!(delivery = id, %error, "an unreadable delivery is dead");
            sqlx::query(&format!(
                "UPDATE deliveries SET state = 3, owner = NULL, last_error = $2, updated_at = {NOW_MS} \
                 WHERE id = $1"
            ))
            .bind(id)
            .bind(format!("the stored delivery could not be read: {error}"))
            .execute(&mut *tx)
            .await?;
            inner.count(channel, -1);
            if let Some(key) = okey {
                keys.insert((channel.as_str().to_owned(), key));
            }
        }
        arm_keys(inner, &mut tx, keys).await?;
    }
    tx.commit().await?;
    let out: Vec<Delivery> = ids.iter().filter_map(|id| found.remove(id)).collect();
    let mut claimed = inner.claimed.lock().unwrap_or_else(PoisonError::into_inner);
    for d in &out {
        claimed.insert(to_i64(d.id), channel);
    }
    Ok(out)
}

/// Keeps the invariant of the ordering keys `keys` (channel, key) after their deliveries changed
/// state: while nothing of a key is in flight, its oldest pending delivery is ready and every other
/// one waits; while something is in flight, all wait. Takes each key's advisory lock first (in lock
/// order; held to the end of the transaction), so the state it reads is the key's latest.
async fn arm_keys(
    inner: &Inner,
    tx: &mut PgConnection,
    keys: impl IntoIterator<Item = (String, String)>,
) -> Result<(), DbError> {
    let keys: BTreeMap<i64, (String, String)> = keys
        .into_iter()
        .map(|(c, k)| (lock_id(&inner.schema, &c, &k), (c, k)))
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = keys.keys().copied().collect();
    sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    let channels: Vec<&str> = keys.values().map(|(c, _)| c.as_str()).collect();
    let okeys: Vec<&str> = keys.values().map(|(_, k)| k.as_str()).collect();
    sqlx::query(
        "WITH s AS MATERIALIZED ( \
           SELECT k.c AS channel, k.o AS okey, \
             (SELECT x.id FROM deliveries x WHERE x.channel = k.c AND x.okey = k.o AND x.state = 1 LIMIT 1) \
               IS NOT NULL AS busy, \
             (SELECT min(x.id) FROM deliveries x WHERE x.channel = k.c AND x.okey = k.o AND x.state IN (0, 4)) AS head \
           FROM unnest($1::text[], $2::text[]) AS k(c, o)), \
         demoted AS ( \
           UPDATE deliveries d SET state = 4 FROM s \
           WHERE d.channel = s.channel AND d.okey = s.okey AND d.state = 0 \
             AND (s.busy OR d.id IS DISTINCT FROM s.head) RETURNING d.id) \
         UPDATE deliveries d SET state = 0 FROM s WHERE d.id = s.head AND d.state = 4 AND NOT s.busy",
    )
    .bind(&channels)
    .bind(&okeys)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(super) async fn settle(inner: &Inner, settlements: &[Settlement]) -> Result<(), DbError> {
    // The first settlement of an id counts (later ones find it settled already).
    let mut seen = HashSet::new();
    let mut ids = Vec::with_capacity(settlements.len());
    let mut kinds = Vec::with_capacity(settlements.len());
    let mut delays = Vec::with_capacity(settlements.len());
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(settlements.len());
    let mut facts: HashMap<i64, (&'static str, Option<i64>, i64)> = HashMap::new();
    for Settlement { id, outcome, attempt } in settlements {
        let id = to_i64(*id);
        if !seen.insert(id) {
            continue;
        }
        let (kind, delay, error, name) = match outcome {
            Outcome::Delivered => (0i64, 0, None, "delivered"),
            Outcome::Retry { delay, error } => (1, duration_ms(*delay), Some(error.as_str()), "retry"),
            Outcome::Requeue => (2, 0, None, ""),
            Outcome::Postpone { delay } => (2, duration_ms(*delay), None, ""),
            Outcome::Dead { error } => (3, 0, Some(error.as_str()), "dead"),
        };
        ids.push(id);
        kinds.push(kind);
        delays.push(delay);
        errors.push(error);
        if kind != 2
            && let Some(attempt) = attempt
        {
            facts.insert(
                id,
                (name, attempt.status.map(i64::from), duration_ms(attempt.latency)),
            );
        }
    }
    let mut tx = inner.pool.begin().await?;
    let rows = sqlx::query(&format!(
        "WITH n AS (SELECT {NOW_MS} AS now) \
         UPDATE deliveries d SET \
           state = CASE s.kind WHEN 0 THEN 2 WHEN 3 THEN 3 ELSE (CASE WHEN d.okey IS NULL THEN 0 ELSE 4 END) END, \
           attempts = d.attempts + (CASE s.kind WHEN 2 THEN 0 ELSE 1 END), \
           due_at = CASE WHEN s.kind IN (1, 2) THEN n.now + s.delay ELSE d.due_at END, \
           last_error = CASE WHEN s.kind IN (1, 3) THEN s.error ELSE d.last_error END, \
           updated_at = n.now, owner = NULL \
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[]) AS s(id, kind, delay, error), n \
         WHERE d.id = s.id AND d.state = 1 AND d.owner = $5 \
         RETURNING d.id, d.channel, d.okey, d.attempts, d.state, d.last_error, n.now"
    ))
    .bind(&ids)
    .bind(&kinds)
    .bind(&delays)
    .bind(&errors)
    .bind(&inner.replica)
    .fetch_all(&mut *tx)
    .await?;
    let mut log_ids = Vec::new();
    let mut log_attempts = Vec::new();
    let mut log_at = Vec::new();
    let mut log_outcomes = Vec::new();
    let mut log_status = Vec::new();
    let mut log_errors: Vec<Option<String>> = Vec::new();
    let mut log_latency = Vec::new();
    let mut keys = BTreeSet::new();
    let mut wake = BTreeSet::new();
    let mut settled: Vec<(Channel, i64)> = Vec::new();
    for row in &rows {
        let id: i64 = row.try_get("id")?;
        let channel = channel_named(row.try_get::<&str, _>("channel")?);
        let okey: Option<String> = row.try_get("okey")?;
        let state: i64 = row.try_get("state")?;
        if state == crate::rows::DELIVERED || state == crate::rows::DEAD {
            settled.push((channel, -1));
        } else {
            wake.insert(channel);
        }
        if let Some(key) = okey {
            wake.insert(channel);
            keys.insert((channel.as_str().to_owned(), key));
        }
        if let Some((name, status, latency)) = facts.get(&id) {
            log_ids.push(id);
            log_attempts.push(row.try_get::<i64, _>("attempts")?);
            log_at.push(row.try_get::<i64, _>("now")?);
            log_outcomes.push(*name);
            log_status.push(*status);
            log_errors.push(if *name == "delivered" {
                None
            } else {
                row.try_get("last_error")?
            });
            log_latency.push(*latency);
        }
    }
    if !log_ids.is_empty() {
        sqlx::query(
            "INSERT INTO attempts (delivery_id, attempt, at, outcome, status, error, latency_ms) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], \
               $6::text[], $7::bigint[])",
        )
        .bind(&log_ids)
        .bind(&log_attempts)
        .bind(&log_at)
        .bind(&log_outcomes)
        .bind(&log_status)
        .bind(&log_errors)
        .bind(&log_latency)
        .execute(&mut *tx)
        .await?;
    }
    arm_keys(inner, &mut tx, keys).await?;
    announce(inner, &mut tx, &wake).await?;
    tx.commit().await?;
    {
        let mut claimed = inner.claimed.lock().unwrap_or_else(PoisonError::into_inner);
        for id in &ids {
            claimed.remove(id);
        }
    }
    for (channel, delta) in settled {
        inner.count(channel, delta);
    }
    inner.wake(&wake);
    Ok(())
}

/// Which in-flight deliveries [`requeue`] puts back to pending.
#[derive(Clone, Copy, Debug)]
pub(super) enum Requeue {
    /// This replica's, of one channel (`release`).
    Channel(Channel),
    /// This replica's (a restart under the same name, `close`).
    Mine,
    /// Those of replicas that are gone (their heartbeat expired and was swept).
    Abandoned,
    /// This replica's that it does not know of: claimed by a call whose answer was lost.
    Orphaned,
}

/// Puts in-flight deliveries back to pending, due now, attempts unchanged. Returns how many.
pub(super) async fn requeue(inner: &Inner, which: Requeue) -> Result<usize, DbError> {
    let condition = match which {
        Requeue::Channel(_) => "owner = $1 AND channel = $2",
        Requeue::Mine => "owner = $1",
        Requeue::Abandoned => {
            "(owner IS NULL OR NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = deliveries.owner))"
        }
        Requeue::Orphaned => "owner = $1 AND NOT (id = ANY($2)) AND updated_at < n.now - $3",
    };
    let text = format!(
        "WITH n AS (SELECT {NOW_MS} AS now) \
         UPDATE deliveries SET state = CASE WHEN okey IS NULL THEN 0 ELSE 4 END, due_at = n.now, \
           updated_at = n.now, owner = NULL FROM n \
         WHERE state = 1 AND {condition} RETURNING id, channel, okey"
    );
    let query = sqlx::query_as::<_, (i64, String, Option<String>)>(&text);
    let query = match which {
        Requeue::Channel(channel) => query.bind(&inner.replica).bind(channel.as_str()),
        Requeue::Mine => query.bind(&inner.replica),
        Requeue::Abandoned => query,
        Requeue::Orphaned => {
            let known: Vec<i64> = inner
                .claimed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .copied()
                .collect();
            query.bind(&inner.replica).bind(known).bind(ORPHAN_AFTER_MS)
        }
    };
    let mut tx = inner.pool.begin().await?;
    let rows = query.fetch_all(&mut *tx).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut wake = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (_, channel, okey) in &rows {
        let channel = channel_named(channel);
        wake.insert(channel);
        if let Some(key) = okey {
            keys.insert((channel.as_str().to_owned(), key.clone()));
        }
    }
    arm_keys(inner, &mut tx, keys).await?;
    announce(inner, &mut tx, &wake).await?;
    tx.commit().await?;
    {
        let mut claimed = inner.claimed.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, _, _) in &rows {
            claimed.remove(id);
        }
    }
    inner.wake(&wake);
    Ok(rows.len())
}

/// The dead letters a [`RedriveFilter`] selects (`d`: deliveries, `e`: events), parameters `$1`…`$5`.
const FILTER: &str = "SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id \
    WHERE d.state = 3 \
    AND ($1::bigint[] IS NULL OR d.id = ANY($1)) \
    AND ($2::text IS NULL OR d.channel = $2) \
    AND ($3::text IS NULL OR e.instance = $3) \
    AND ($4::bigint IS NULL OR e.date_time >= $4) \
    AND ($5::bigint IS NULL OR e.date_time < $5)";

/// Binds the five parameters of [`FILTER`].
fn bind_filter<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    filter: &'q RedriveFilter,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let ids: Option<Vec<i64>> =
        (!filter.ids.is_empty()).then(|| filter.ids.iter().map(|id| to_i64(*id)).collect());
    query
        .bind(ids)
        .bind(filter.channel.map(Channel::as_str))
        .bind(filter.instance.as_ref().map(InstanceName::as_str))
        .bind(filter.since.map(|t| t.timestamp_millis()))
        .bind(filter.until.map(|t| t.timestamp_millis()))
}

pub(super) async fn redrive(inner: &Inner, filter: &RedriveFilter) -> Result<usize, DbError> {
    let mut tx = inner.pool.begin().await?;
    let rows = bind_filter(
        sqlx::query(&format!(
            "WITH n AS (SELECT {NOW_MS} AS now) \
             UPDATE deliveries SET state = CASE WHEN okey IS NULL THEN 0 ELSE 4 END, attempts = 0, \
               due_at = n.now, updated_at = n.now FROM n \
             WHERE state = 3 AND id IN ({FILTER}) RETURNING channel, okey"
        )),
        filter,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut keys = BTreeSet::new();
    let mut wake = BTreeSet::new();
    let mut counts: BTreeMap<Channel, i64> = BTreeMap::new();
    for row in &rows {
        let channel = channel_named(row.try_get::<&str, _>("channel")?);
        wake.insert(channel);
        *counts.entry(channel).or_default() += 1;
        if let Some(key) = row.try_get::<Option<String>, _>("okey")? {
            keys.insert((channel.as_str().to_owned(), key));
        }
    }
    arm_keys(inner, &mut tx, keys).await?;
    announce(inner, &mut tx, &wake).await?;
    tx.commit().await?;
    for (channel, n) in counts {
        inner.count(channel, n);
    }
    inner.wake(&wake);
    Ok(rows.len())
}

/// Deletes the dead letters `filter` selects, their attempts, and their events once no delivery of
/// them is left. Returns how many.
pub(super) async fn purge(inner: &Inner, filter: &RedriveFilter) -> Result<usize, DbError> {
    let mut tx = inner.pool.begin().await?;
    let events: Vec<i64> = bind_filter(
        sqlx::query(&format!(
            "DELETE FROM deliveries WHERE state = 3 AND id IN ({FILTER}) RETURNING event_id"
        )),
        filter,
    )
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|row| row.try_get(0))
    .collect::<Result<_, _>>()?;
    forget_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(events.len())
}

/// One step of pruning: deletes up to [`PRUNE_BATCH`] delivered deliveries settled more than
/// `retention` ago, their attempts, and their events once no delivery of them is left.
pub(super) async fn prune(inner: &Inner, retention: Duration) -> Result<usize, DbError> {
    let mut tx = inner.pool.begin().await?;
    let events: Vec<i64> = sqlx::query_scalar(&format!(
        "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE state = 2 \
           AND updated_at < {NOW_MS} - $1 ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING event_id"
    ))
    .bind(duration_ms(retention))
    .bind(to_i64(PRUNE_BATCH as u64))
    .fetch_all(&mut *tx)
    .await?;
    forget_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(events.len())
}

/// Deletes those of `events` that have no delivery left.
async fn forget_events(tx: &mut PgConnection, events: &[i64]) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut unique = events.to_vec();
    unique.sort_unstable();
    unique.dedup();
    sqlx::query(
        "DELETE FROM events e WHERE e.id = ANY($1) \
         AND (SELECT d.id FROM deliveries d WHERE d.event_id = e.id LIMIT 1) IS NULL",
    )
    .bind(&unique)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
