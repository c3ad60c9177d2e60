//! [`PusherSink`]: the [`EventSink`] of the Pusher channel.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use evolution_events::{
    Bytes, Capabilities, Channel, Delivery, DeliveryReport, Destination, ErrorKind, EventSink, PusherApp,
    PusherTarget, Retry, SinkError, async_trait, group_by_key, send_in_order,
};
use reqwest::header::RETRY_AFTER;
use reqwest::redirect::Policy;
use reqwest::{Client, Method};
use serde::Serialize;

use crate::classify::{classify, error, transport};
use crate::config::{Oversize, PUSHER_MAX_BATCH, PusherConfig};
use crate::sign::signed_query;

/// The channel name of this sink (`pusher`).
pub const NAME: &str = "pusher";

/// The largest batch `send` takes.
const MAX_BATCH: usize = 100;

/// Triggers events through the Pusher Channels HTTP API (see the [crate documentation](crate)).
#[derive(Debug)]
pub struct PusherSink {
    config: PusherConfig,
    /// `None` once shut down.
    client: Mutex<Option<Client>>,
}

/// One item ready to go: its index in the batch, its target and its payload.
struct Item<'a> {
    index: usize,
    target: &'a PusherTarget,
    payload: Bytes,
}

/// The payload as the `data` string (`item` checked it is UTF-8), borrowed: no copy.
fn data<'b>(item: &'b Item<'_>) -> &'b str {
    std::str::from_utf8(&item.payload).unwrap_or_default()
}

#[derive(Serialize)]
struct BatchBody<'a> {
    batch: Vec<BatchEvent<'a>>,
}

#[derive(Serialize)]
struct BatchEvent<'a> {
    channel: &'a str,
    name: &'a str,
    data: &'a str,
}

#[derive(Serialize)]
struct EventBody<'a> {
    name: &'a str,
    channels: [&'a str; 1],
    data: &'a str,
}

impl PusherSink {
    /// A sink with these settings.
    ///
    /// # Errors
    /// `ConfigInvalid` when a timeout or the payload limit is zero, the probe app is incomplete,
    /// or the HTTP client cannot be built.
    pub fn new(config: PusherConfig) -> Result<Self, SinkError> {
        if config.request_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(error(
                ErrorKind::ConfigInvalid,
                "the Pusher request and connect timeouts must be longer than zero",
            ));
        }
        if config.max_payload_bytes == 0 {
            return Err(error(
                ErrorKind::ConfigInvalid,
                "PUSHER_MAX_PAYLOAD_BYTES must be greater than 0",
            ));
        }
        if let Some(app) = &config.probe {
            base_url(app)?;
        }
        let client = Client::builder()
            .redirect(Policy::none())
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(|e| {
                error(
                    ErrorKind::ConfigInvalid,
                    format!("cannot build the HTTP client: {}", e.without_url()),
                )
            })?;
        Ok(Self {
            config,
            client: Mutex::new(Some(client)),
        })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &PusherConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn client(&self) -> Result<Client, SinkError> {
        self.lock()
            .clone()
            .ok_or_else(|| error(ErrorKind::Closed, "the Pusher sink is shut down"))
    }

    /// Checks one delivery; the item to send, or why it cannot be sent.
    fn item<'a>(&self, index: usize, delivery: &'a Delivery) -> Result<Item<'a>, SinkError> {
        let target = delivery
            .destination
            .pusher()
            .ok_or_else(|| delivery.destination.mismatch(Channel::Pusher))?;
        base_url(&target.app)?;
        let mut payload = delivery.payload();
        if payload.len() > self.config.max_payload_bytes && self.config.oversize == Oversize::Reference {
            payload = reference(delivery);
        }
        if payload.len() > self.config.max_payload_bytes {
            return Err(error(
                ErrorKind::Rejected,
                format!(
                    "{}: the payload of event {} is {} bytes, over the Pusher limit of {} bytes \
                     (PUSHER_MAX_PAYLOAD_BYTES): not sent; send smaller data, or raise the limit if your \
                     Pusher-protocol server accepts more",
                    delivery.destination.label(),
                    delivery.envelope.id(),
                    payload.len(),
                    self.config.max_payload_bytes
                ),
            )
            .with_retry(Retry::Never));
        }
        if std::str::from_utf8(&payload).is_err() {
            return Err(error(
                ErrorKind::Unexpected,
                format!("the payload of event {} is not UTF-8", delivery.envelope.id()),
            ));
        }
        Ok(Item {
            index,
            target,
            payload,
        })
    }

    /// Sends one app's items in order, in requests of up to 10 (or 1) events, stopping at the
    /// first retryable failure. Returns the failed items.
    async fn send_app(
        &self,
        client: &Client,
        app: &PusherApp,
        items: &[Item<'_>],
    ) -> Vec<(usize, SinkError)> {
        let size = if self.config.batch_events {
            PUSHER_MAX_BATCH
        } else {
            1
        };
        send_in_order(
            Channel::Pusher,
            "Pusher app",
            items.chunks(size),
            |item| item.index,
            |chunk| async move {
                match self.trigger(client, app, chunk).await {
                    Ok(()) => Vec::new(),
                    Err(e) => chunk.iter().map(|item| (item.index, e.duplicate())).collect(),
                }
            },
        )
        .await
    }

    /// One request: `POST /apps/{id}/events` for one item, `/batch_events` for several.
    async fn trigger(&self, client: &Client, app: &PusherApp, chunk: &[Item<'_>]) -> Result<(), SinkError> {
        let (path, body) = if let [item] = chunk {
            let body = EventBody {
                name: &item.target.event,
                channels: [&item.target.channel],
                data: data(item),
            };
            (format!("/apps/{}/events", app.app_id), serde_json::to_vec(&body))
        } else {
            let batch = chunk
                .iter()
                .map(|item| BatchEvent {
                    channel: &item.target.channel,
                    name: &item.target.event,
                    data: data(item),
                })
                .collect();
            (
                format!("/apps/{}/batch_events", app.app_id),
                serde_json::to_vec(&BatchBody { batch }),
            )
        };
        let body =
            body.map_err(|e| error(ErrorKind::Unexpected, format!("cannot encode the request: {e}")))?;
        let label = match chunk {
            [item] => Destination::Pusher(item.target.clone()).label(),
            [first, ..] => format!(
                "{} and {} more",
                Destination::Pusher(first.target.clone()).label(),
                chunk.len() - 1
            ),
            [] => return Ok(()),
        };
        self.call(client, app, Method::POST, &path, Some(body), &label)
            .await
    }

    /// A signed request to `app`; the answer classified.
    async fn call(
        &self,
        client: &Client,
        app: &PusherApp,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        label: &str,
    ) -> Result<(), SinkError> {
        let query = signed_query(
            method.as_str(),
            path,
            &app.key,
            app.secret.expose(),
            now(),
            body.as_deref(),
            &[],
        );
        let url = format!("{}{path}?{query}", base_url(app)?);
        let mut request = client.request(method, url);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.map_err(|e| transport(e, label))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let answer = response.bytes().await.map_err(|e| transport(e, label))?;
        classify(status, &answer, retry_after, label)
    }
}

/// `http(s)://host[:port]` of an app: its host override, else `api-{cluster}.pusher.com`.
///
/// # Errors
/// `ConfigInvalid` when the app is incomplete or its host is not a host name.
pub(crate) fn base_url(app: &PusherApp) -> Result<String, SinkError> {
    let invalid = |what: String| Err(error(ErrorKind::ConfigInvalid, what));
    if app.app_id.is_empty()
        || !app
            .app_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return invalid(format!(
            "the Pusher appId {:?} must be letters, digits, `-` or `_`",
            app.app_id
        ));
    }
    if app.key.is_empty() || app.secret.is_empty() {
        return invalid(format!("the Pusher app {} needs a key and a secret", app.app_id));
    }
    let host = match app.host.as_deref().map(str::trim) {
        Some(host) if !host.is_empty() => host.to_owned(),
        _ if !app.cluster.trim().is_empty() => format!("api-{}.pusher.com", app.cluster.trim()),
        _ => {
            return invalid(format!(
                "the Pusher app {} needs a cluster (or a host: PUSHER_HOST)",
                app.app_id
            ));
        }
    };
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '[' | ']'))
    {
        return invalid(format!(
            "the Pusher API host {host:?} is not a host name (no scheme, path or port: set the port with \
             PUSHER_PORT)"
        ));
    }
    let scheme = if app.use_tls { "https" } else { "http" };
    Ok(match app.port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    })
}

/// What [`Oversize::Reference`] sends instead of an oversize payload.
fn reference(delivery: &Delivery) -> Bytes {
    #[derive(Serialize)]
    struct Reference<'a> {
        id: evolution_events::Uuid,
        event: &'a str,
        instance: &'a str,
        truncated: bool,
    }
    let envelope = &delivery.envelope;
    let reference = Reference {
        id: envelope.id(),
        event: delivery.profile.payload_event(envelope.kind()),
        instance: envelope.instance().as_str(),
        truncated: true,
    };
    // Serializing a UUID and two strings cannot fail.
    serde_json::to_vec(&reference).map_or_else(|_| Bytes::new(), Bytes::from)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[async_trait]
impl EventSink for PusherSink {
    fn channel(&self) -> Channel {
        Channel::Pusher
    }

    /// Batches of up to 100, ordered.
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(MAX_BATCH).ordered()
    }

    fn max_payload_bytes(&self) -> Option<usize> {
        Some(self.config.max_payload_bytes)
    }

    /// Triggers every item: one app's items in order (10 per request with `batch_events`),
    /// different apps concurrently.
    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport, SinkError> {
        let client = self.client()?;
        let mut report = DeliveryReport::success();
        let mut items = Vec::with_capacity(batch.len());
        for (index, delivery) in batch.iter().enumerate() {
            match self.item(index, delivery) {
                Ok(item) => items.push((&item.target.app, item)),
                Err(e) => report.fail(index, e),
            }
        }
        let groups = group_by_key(items);
        let sends = groups
            .iter()
            .map(|(app, items)| self.send_app(&client, app, items));
        for failures in futures_util::future::join_all(sends).await {
            report.extend(failures);
        }
        Ok(report)
    }

    /// Queries the probe app's channels (`GET /apps/{id}/channels`, signed): the credentials and
    /// the server are checked. Without a probe app, `Ok`.
    async fn health_check(&self) -> Result<(), SinkError> {
        let client = self.client()?;
        let Some(app) = &self.config.probe else {
            return Ok(());
        };
        let path = format!("/apps/{}/channels", app.app_id);
        let label = format!("app {} (health check)", app.app_id);
        self.call(&client, app, Method::GET, &path, None, &label).await
    }

    /// Nothing is buffered: `send` returns once the server answered.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Drops the HTTP client; later sends fail with `Closed`. Idempotent.
    async fn shutdown(&self) -> Result<(), SinkError> {
        self.lock().take();
        Ok(())
    }

    /// Nothing to provision: Pusher channels exist as soon as an event is triggered on them.
    async fn prepare(&self, _destinations: &[Destination]) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use evolution_events::Sensitive;

    fn app() -> PusherApp {
        PusherApp {
            app_id: "123456".into(),
            key: "abc123".into(),
            secret: Sensitive::new("xyz789"),
            cluster: "us2".into(),
            use_tls: true,
            host: None,
            port: None,
        }
    }

    #[test]
    fn api_location() {
        assert_eq!(base_url(&app()).unwrap(), "https://api-us2.pusher.com");
        let local = PusherApp {
            use_tls: false,
            host: Some("127.0.0.1".into()),
            port: Some(6001),
            ..app()
        };
        assert_eq!(base_url(&local).unwrap(), "http://127.0.0.1:6001");
        let bad = |app: PusherApp| base_url(&app).unwrap_err().to_string();
        assert!(
            bad(PusherApp {
                app_id: "1/2".into(),
                ..app()
            })
            .contains("appId")
        );
        assert!(
            bad(PusherApp {
                secret: Sensitive::default(),
                ..app()
            })
            .contains("needs a key and a secret")
        );
        assert!(
            bad(PusherApp {
                cluster: String::new(),
                ..app()
            })
            .contains("needs a cluster")
        );
        assert!(
            bad(PusherApp {
                host: Some("http://x/y".into()),
                ..app()
            })
            .contains("not a host name")
        );
        assert!(
            !format!("{:?}", app()).contains("xyz789"),
            "the secret never prints"
        );
    }
}
