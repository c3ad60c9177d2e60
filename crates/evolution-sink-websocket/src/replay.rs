//! Replay on reconnection: a client that connects with the id of the last event it saw gets the
//! events it missed from the [`History`] (the server's outbox), then a `replay` summary.

use std::sync::Arc;

use evolution_events::naming::GLOBAL_ROOM;
use evolution_events::{Delivery, InstanceName, RawValue, Uuid, async_trait};
use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use crate::auth::Access;

/// The event a replaying socket gets after the replayed events:
/// `{"after": "<id>", "replayed": n, "complete": bool}`.
pub const REPLAY_EVENT: &str = "replay";

/// Where the sink finds what a reconnecting client missed: the websocket deliveries of the events
/// accepted after a given event. The server implements it over its outbox.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// The websocket deliveries of the events accepted after `after`, oldest first, at most
    /// `limit`, only of `instance` when given (and then `after` must be one of its events).
    /// `None` when `after` is not kept (never accepted, another instance's, or pruned).
    ///
    /// # Errors
    /// Why they could not be read (a storage error; no secrets).
    async fn after(
        &self,
        after: Uuid,
        instance: Option<&InstanceName>,
        limit: usize,
    ) -> Result<Option<Vec<Delivery>>, String>;
}

/// The id a connection asks to resume after: the handshake's `auth.lastEventId`, else the
/// `lastEventId` query parameter. `Err` when one is given but is not an event id.
pub(crate) fn requested<A: Adapter>(auth: Option<&Value>, s: &SocketRef<A>) -> Result<Option<Uuid>, String> {
    let raw = match auth.and_then(|a| a.get("lastEventId")) {
        Some(Value::String(id)) => Some(id.trim().to_owned()),
        Some(Value::Null) | None => s.req_parts().uri.query().and_then(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "lastEventId")
                .map(|(_, v)| v.trim().to_owned())
        }),
        Some(other) => return Err(format!("lastEventId must be a string, not {other}")),
    };
    match raw {
        None => Ok(None),
        Some(id) if id.is_empty() => Ok(None),
        Some(id) => Uuid::parse_str(&id)
            .map(Some)
            .map_err(|_| format!("lastEventId `{id}` is not an event id (a UUID)")),
    }
}

/// Whether a socket admitted with `access` on `namespace` sees `delivery` (the rules of the live
/// emission: its namespace, and on `/` the instance's room or, for global access, every room).
fn visible(delivery: &Delivery, namespace: &str, access: &Access) -> Option<(String, Box<RawValue>)> {
    let target = delivery.destination.websocket()?;
    if target.namespace != namespace {
        return None;
    }
    let allowed = match (access, target.room.as_deref()) {
        (Access::Global, _) => true,
        (Access::Instance(_), Some(GLOBAL_ROOM)) | (Access::Denied, _) => false,
        (Access::Instance(own), Some(room)) => own.as_str() == room,
        // A per-instance namespace: the socket was admitted for that instance.
        (Access::Instance(_), None) => true,
    };
    if !allowed {
        return None;
    }
    let payload = delivery.payload();
    let data = RawValue::from_string(String::from_utf8(payload.to_vec()).ok()?).ok()?;
    Some((target.event.clone(), data))
}

/// Replays to `s` what it missed after `after`, at most `limit` events, then emits the summary.
pub(crate) async fn replay<A: Adapter>(
    history: Arc<dyn History>,
    s: SocketRef<A>,
    access: Access,
    after: Uuid,
    limit: usize,
) {
    let namespace = s.ns().to_owned();
    let instance = match &access {
        Access::Instance(own) => Some(own.clone()),
        Access::Global => namespace
            .strip_prefix('/')
            .filter(|name| !name.is_empty())
            .and_then(|name| InstanceName::new(name).ok()),
        Access::Denied => return,
    };
    let (replayed, complete, error) = match history.after(after, instance.as_ref(), limit).await {
        Ok(Some(deliveries)) => {
            let mut replayed = 0_usize;
            let mut complete = deliveries.len() < limit;
            for delivery in &deliveries {
                let Some((event, data)) = visible(delivery, &namespace, &access) else {
                    continue;
                };
                if let Err(e) = s.emit(&event, &data) {
                    tracing::debug!(error = %e, "a replaying socket's buffer is full; replay cut short");
                    complete = false;
                    break;
                }
                replayed += 1;
            }
            (replayed, complete, None)
        }
        Ok(None) => (
            0,
            false,
            Some(format!(
                "event {after} is not kept for this connection: never accepted, another instance's, or pruned"
            )),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the events to replay");
            (
                0,
                false,
                Some("the events to replay could not be read; try again".to_owned()),
            )
        }
    };
    let mut summary = json!({"after": after, "replayed": replayed, "complete": complete});
    if let Some(error) = error {
        summary["error"] = Value::String(error);
    }
    if let Err(e) = s.emit(REPLAY_EVENT, &summary) {
        tracing::debug!(error = %e, "cannot send the replay summary");
    }
}
