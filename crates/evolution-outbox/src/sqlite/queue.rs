//! Queue operations the writer runs inside its transaction: claim, settle, release, redrive,
//! purge, prune. Each keeps the ordering keys' queues (`keys`) in step with the rows it changes.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use evolution_events::{Channel, Delivery, InstanceName};
use rusqlite::types::Value;
use rusqlite::{Connection, params};

use super::decode::{DELIVERY_SELECT, Decoder, channel_named};
use super::keys::Keys;
use super::writer::{Staged, WriteError, db};
use super::{DEAD, DELIVERED, IN_FLIGHT, READY, WAITING, duration_ms, to_i64};
use crate::{Outcome, RedriveFilter, Settlement};

/// Delivered deliveries deleted per prune step (one step per transaction, so that pruning never
/// holds up ingest for long).
pub(super) const PRUNE_BATCH: usize = 1_000;

pub(super) fn claim(
    conn: &Connection,
    keys: &mut Keys,
    staged: &mut Staged,
    channel: Channel,
    limit: usize,
    now: i64,
) -> Result<Vec<Delivery>, WriteError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let queues = keys.load(conn)?;
    let mut decoder = Decoder::default();
    // Each claimed delivery with its ordering key.
    let mut claimed: Vec<(i64, Option<Arc<str>>)> = Vec::new();
    let mut bad: Vec<(i64, Option<String>, String)> = Vec::new();
    let mut take = |row: &rusqlite::Row<'_>, decoder: &mut Decoder, out: &mut Vec<Delivery>| {
        let id: i64 = row.get("id").unwrap_or_default();
        match decoder.delivery(row) {
            Ok(delivery) => {
                claimed.push((id, delivery.ordering_key.clone()));
                out.push(delivery);
            }
            Err(e) => bad.push((id, row.get("okey").ok().flatten(), e)),
        }
    };
    let read = db("read the due deliveries");
    let mut ready = conn
        .prepare_cached(&format!(
            "{DELIVERY_SELECT} WHERE d.channel = ?1 AND d.state = 0 AND d.due_at <= ?2 \
             ORDER BY d.due_at, d.id LIMIT ?3"
        ))
        .map_err(&read)?;
    let mut one = conn
        .prepare_cached(&format!("{DELIVERY_SELECT} WHERE d.id = ?1 AND d.state = 4"))
        .map_err(&read)?;
    let mut rows = ready
        .query(params![channel.as_str(), now, to_i64(limit as u64)])
        .map_err(&read)?;
    while let Some(row) = rows.next().map_err(&read)? {
        if out.len() >= limit {
            break;
        }
        take(row, &mut decoder, &mut out);
        let okey: Option<String> = row.get("okey").ok().flatten();
        let Some(key) = okey else {
            continue;
        };
        let rest = limit - out.len();
        if rest == 0 {
            continue;
        }
        let head: i64 = row.get("id").unwrap_or_default();
        // The run of waiting deliveries behind the head, while due.
        for id in queues.behind(channel, &key, head).take(rest) {
            let mut behind = one
                .query([id])
                .map_err(db("read the deliveries of an ordering key"))?;
            let Some(row) = behind
                .next()
                .map_err(db("read the deliveries of an ordering key"))?
            else {
                break;
            };
            let due: i64 = row.get("due_at").unwrap_or(i64::MAX);
            if due > now {
                break;
            }
            take(row, &mut decoder, &mut out);
        }
    }
    drop(rows);
    if !claimed.is_empty() {
        let mut mark = conn
            .prepare_cached("UPDATE deliveries SET state = 1, updated_at = ?2 WHERE id = ?1")
            .map_err(db("mark the claimed deliveries in flight"))?;
        for (id, key) in &claimed {
            mark.execute(params![id, now])
                .map_err(db("mark the claimed deliveries in flight"))?;
            if let Some(key) = key {
                queues.set(channel, key, *id, IN_FLIGHT);
            }
        }
    }
    let mut armed = BTreeSet::new();
    for (id, okey, error) in bad {
        tracing::error!(delivery = id, %error, "an unreadable delivery is dead");
        conn.prepare_cached(
            "UPDATE deliveries SET state = 3, last_error = ?2, updated_at = ?3 WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                format!("the stored delivery could not be read: {error}"),
                now
            ])
        })
        .map_err(db("mark an unreadable delivery dead"))?;
        *staged.live.entry(channel).or_default() -= 1;
        if let Some(key) = okey {
            queues.set(channel, &key, id, DEAD);
            armed.insert(key);
        }
    }
    for key in armed {
        queues.arm(conn, channel, &key)?;
        staged.notify.insert(channel);
    }
    Ok(out)
}

pub(super) fn settle(
    conn: &Connection,
    keys: &mut Keys,
    staged: &mut Staged,
    settlements: Vec<Settlement>,
    now: i64,
) -> Result<(), WriteError> {
    let queues = keys.load(conn)?;
    let write = db("record the outcomes of deliveries");
    let mut update = conn
        .prepare_cached(
            "UPDATE deliveries SET \
               state = CASE ?2 WHEN 0 THEN 2 WHEN 3 THEN 3 ELSE (CASE WHEN okey IS NULL THEN 0 ELSE 4 END) END, \
               attempts = attempts + (CASE ?2 WHEN 2 THEN 0 ELSE 1 END), \
               due_at = CASE WHEN ?2 IN (1, 2) THEN ?3 ELSE due_at END, \
               last_error = CASE WHEN ?2 IN (1, 3) THEN ?4 ELSE last_error END, \
               updated_at = ?5 \
             WHERE id = ?1 AND state = 1 \
             RETURNING channel, okey, attempts, state",
        )
        .map_err(&write)?;
    let mut log = conn
        .prepare_cached(
            "INSERT INTO attempts (delivery_id, attempt, at, outcome, status, error, latency_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db("record the attempts"))?;
    // The first settlement of an id counts (later ones find it settled already).
    let mut seen = HashSet::new();
    let mut armed: BTreeSet<(Channel, String)> = BTreeSet::new();
    for Settlement { id, outcome, attempt } in settlements {
        let id = to_i64(id);
        if !seen.insert(id) {
            continue;
        }
        let (kind, due, error, name) = match outcome {
            Outcome::Delivered => (0u8, 0, None, "delivered"),
            Outcome::Retry { delay, error } => {
                (1, now.saturating_add(duration_ms(delay)), Some(error), "retry")
            }
            Outcome::Requeue => (2, now, None, ""),
            Outcome::Postpone { delay } => (2, now.saturating_add(duration_ms(delay)), None, ""),
            Outcome::Dead { error } => (3, 0, Some(error), "dead"),
        };
        let mut rows = update
            .query(params![id, kind, due, error.as_deref(), now])
            .map_err(&write)?;
        let Some(row) = rows.next().map_err(&write)? else {
            // Not in flight (settled already, or released): nothing to do.
            continue;
        };
        let channel: String = row.get(0).map_err(&write)?;
        let okey: Option<String> = row.get(1).map_err(&write)?;
        let attempts: i64 = row.get(2).map_err(&write)?;
        let state: i64 = row.get(3).map_err(&write)?;
        drop(rows);
        let channel = channel_named(&channel);
        // Work may have become claimable: a delivery back to pending, or an ordering key freed.
        if state == READY || state == WAITING || okey.is_some() {
            staged.notify.insert(channel);
        }
        if state == DELIVERED || state == DEAD {
            *staged.live.entry(channel).or_default() -= 1;
        }
        if let Some(key) = okey {
            queues.set(channel, &key, id, state);
            armed.insert((channel, key));
        }
        if kind != 2
            && let Some(attempt) = attempt
        {
            log.execute(params![
                id,
                attempts,
                now,
                name,
                attempt.status.map(i64::from),
                error,
                duration_ms(attempt.latency),
            ])
            .map_err(db("record the attempts"))?;
        }
    }
    for (channel, key) in armed {
        queues.arm(conn, channel, &key)?;
    }
    Ok(())
}

pub(super) fn release(
    conn: &Connection,
    keys: &mut Keys,
    staged: &mut Staged,
    channel: Channel,
    now: i64,
) -> Result<(), WriteError> {
    let queues = keys.load(conn)?;
    let failed = db("release the in-flight deliveries");
    let released: Vec<(i64, String)> = conn
        .prepare_cached(
            "UPDATE deliveries SET state = CASE WHEN okey IS NULL THEN 0 ELSE 4 END, due_at = ?2, \
             updated_at = ?2 WHERE channel = ?1 AND state = 1 RETURNING id, okey",
        )
        .and_then(|mut s| {
            s.query_map(params![channel.as_str(), now], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Option<String>>(1)?))
            })?
            .filter_map(|r| r.map(|(id, key)| key.map(|k| (id, k))).transpose())
            .collect()
        })
        .map_err(failed)?;
    let mut armed = BTreeSet::new();
    for (id, key) in released {
        queues.set(channel, &key, id, WAITING);
        armed.insert(key);
    }
    for key in armed {
        queues.arm(conn, channel, &key)?;
    }
    staged.notify.insert(channel);
    Ok(())
}

/// The `WHERE` of the dead letters a [`RedriveFilter`] selects (`d`: deliveries, `e`: events) and
/// its parameters `?1`…`?5`.
const FILTER: &str = "SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id \
    WHERE d.state = 3 \
    AND (?1 IS NULL OR d.id IN (SELECT value FROM json_each(?1))) \
    AND (?2 IS NULL OR d.channel = ?2) \
    AND (?3 IS NULL OR e.instance = ?3) \
    AND (?4 IS NULL OR e.date_time >= ?4) \
    AND (?5 IS NULL OR e.date_time < ?5)";

fn filter_params(filter: &RedriveFilter) -> [Value; 5] {
    let ids = (!filter.ids.is_empty()).then(|| {
        let ids: Vec<String> = filter.ids.iter().map(u64::to_string).collect();
        format!("[{}]", ids.join(","))
    });
    let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(s.to_owned()));
    let int = |n: Option<i64>| n.map_or(Value::Null, Value::Integer);
    [
        text(ids.as_deref()),
        text(filter.channel.map(Channel::as_str)),
        text(filter.instance.as_ref().map(InstanceName::as_str)),
        int(filter.since.map(|t| t.timestamp_millis())),
        int(filter.until.map(|t| t.timestamp_millis())),
    ]
}

pub(super) fn redrive(
    conn: &Connection,
    keys: &mut Keys,
    staged: &mut Staged,
    filter: &RedriveFilter,
    now: i64,
) -> Result<usize, WriteError> {
    let queues = keys.load(conn)?;
    let failed = db("redrive dead letters");
    let [ids, channel, instance, since, until] = filter_params(filter);
    let rows: Vec<(i64, String, Option<String>)> = conn
        .prepare_cached(&format!(
            "UPDATE deliveries SET state = CASE WHEN okey IS NULL THEN 0 ELSE 4 END, attempts = 0, \
             due_at = ?6, updated_at = ?6 WHERE state = 3 AND id IN ({FILTER}) RETURNING id, channel, okey"
        ))
        .and_then(|mut s| {
            s.query_map(params![ids, channel, instance, since, until, now], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect()
        })
        .map_err(failed)?;
    let mut armed = BTreeSet::new();
    for (id, channel, okey) in &rows {
        let channel = channel_named(channel);
        staged.notify.insert(channel);
        *staged.live.entry(channel).or_default() += 1;
        if let Some(key) = okey {
            let key: Arc<str> = Arc::from(key.as_str());
            queues.add(channel, &key, *id, WAITING);
            armed.insert((channel, key));
        }
    }
    for (channel, key) in armed {
        queues.arm(conn, channel, &key)?;
    }
    Ok(rows.len())
}

/// Deletes the dead letters `filter` selects, their attempts, and their events once no delivery of
/// them is left. Returns how many.
pub(super) fn purge(conn: &Connection, filter: &RedriveFilter) -> Result<usize, WriteError> {
    let [ids, channel, instance, since, until] = filter_params(filter);
    let events: Vec<i64> = conn
        .prepare_cached(&format!(
            "DELETE FROM deliveries WHERE state = 3 AND id IN ({FILTER}) RETURNING event_id"
        ))
        .and_then(|mut s| {
            s.query_map(params![ids, channel, instance, since, until], |row| row.get(0))?
                .collect()
        })
        .map_err(db("purge dead letters"))?;
    forget_events(conn, &events)?;
    Ok(events.len())
}

/// One step of pruning: deletes up to [`PRUNE_BATCH`] delivered deliveries older than `retention`,
/// their attempts, and their events once no delivery of them is left. Returns how many deliveries.
pub(super) fn prune(conn: &Connection, retention: Duration, now: i64) -> Result<usize, WriteError> {
    let cutoff = now.saturating_sub(duration_ms(retention));
    let events: Vec<i64> = conn
        .prepare_cached(
            "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE state = 2 AND updated_at < ?1 \
             ORDER BY updated_at LIMIT ?2) RETURNING event_id",
        )
        .and_then(|mut s| {
            s.query_map(params![cutoff, to_i64(PRUNE_BATCH as u64)], |row| row.get(0))?
                .collect()
        })
        .map_err(db("prune delivered deliveries"))?;
    forget_events(conn, &events)?;
    Ok(events.len())
}

/// Deletes those of `events` that have no delivery left.
fn forget_events(conn: &Connection, events: &[i64]) -> Result<(), WriteError> {
    let mut unique = events.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut delete = conn
        .prepare_cached(
            "DELETE FROM events WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_id = ?1)",
        )
        .map_err(db("delete the events left with no delivery"))?;
    for id in unique {
        delete
            .execute([id])
            .map_err(db("delete the events left with no delivery"))?;
    }
    Ok(())
}
