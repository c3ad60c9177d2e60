//! [`WebhookSink`]: the [`EventSink`] of the webhook channel.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use evolution_events::{
    Capabilities, Channel, Delivery, DeliveryReport, Destination, ErrorKind, EventSink, SinkError,
    WebhookTarget, async_trait, group_by_key, send_in_order,
};
use reqwest::header::{HeaderValue, RETRY_AFTER, USER_AGENT};
use reqwest::redirect::Policy;
use reqwest::{Client, Response, Url};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::classify::{self, HttpError, classify, classify_transport, error, url_secrets};
use crate::config::WebhookConfig;
use crate::network::{Guard, GuardedResolver, check_url};
use crate::request;

/// The channel name of this sink (`webhook`).
pub const NAME: &str = "webhook";

/// The largest batch `send` takes.
const MAX_BATCH: usize = 64;

/// How much of a successful answer's body is read (so that the connection can be reused) before
/// it is dropped.
const DRAIN_BYTES: usize = 64 * 1024;

/// How long reading an answer's body may take once its status is known.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a health check's probe may take (less if the request timeout is shorter).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Delivers events as HTTP POSTs (see the [crate documentation](crate) for the wire format and
/// the classification of answers).
///
/// One [`reqwest::Client`] per sink: connections are kept alive and pooled per host. Redirects are
/// never followed.
#[derive(Debug)]
pub struct WebhookSink {
    shared: Arc<Shared>,
    /// `None` once shut down (dropping the client releases the pooled connections).
    client: Mutex<Option<Client>>,
}

/// What every delivery task needs besides the client.
#[derive(Debug)]
struct Shared {
    config: WebhookConfig,
    user_agent: HeaderValue,
    probe: Option<Probe>,
    guard: Arc<Guard>,
    /// One permit pool per host (`host:port`), created on first use.
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Shared {
    /// The permit pool of `url`'s host.
    fn host_limit(&self, url: &Url) -> Arc<Semaphore> {
        let host = &url[url::Position::BeforeHost..url::Position::AfterPort];
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(limit) = hosts.get(host) {
            return Arc::clone(limit);
        }
        let limit = Arc::new(Semaphore::new(self.config.max_concurrency_per_host));
        hosts.insert(host.to_owned(), Arc::clone(&limit));
        limit
    }
}

/// The parsed probe URL and its label.
#[derive(Debug)]
struct Probe {
    url: Url,
    label: String,
}

impl WebhookSink {
    /// A sink with these settings.
    ///
    /// # Errors
    /// `ConfigInvalid` when a timeout is zero, the user agent is not a valid header value, the
    /// probe URL is not an absolute http(s) URL, or the HTTP client cannot be built.
    pub fn new(config: WebhookConfig) -> Result<Self, SinkError> {
        if config.max_concurrency_per_host == 0 {
            return Err(error(
                ErrorKind::ConfigInvalid,
                "the per-host concurrency (WEBHOOK_MAX_CONCURRENCY_PER_HOST) must be at least 1",
            ));
        }
        if config.request_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(error(
                ErrorKind::ConfigInvalid,
                "the request and connect timeouts must be longer than zero",
            ));
        }
        let user_agent = HeaderValue::from_str(&config.user_agent).map_err(|_| {
            error(
                ErrorKind::ConfigInvalid,
                format!(
                    "the user agent {:?} is not a valid header value",
                    config.user_agent
                ),
            )
        })?;
        let probe = match &config.probe_url {
            None => None,
            Some(raw) => {
                let label = label_of(raw);
                let url = request::parse_url(raw, &label, "the probe URL")?;
                Some(Probe { url, label })
            }
        };
        let guard = Arc::new(Guard::new(config.allowed_networks.clone()));
        let client = Client::builder()
            .dns_resolver(GuardedResolver(Arc::clone(&guard)))
            .redirect(Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| {
                let detail = evolution_events::error_chain(Some(&e));
                error(ErrorKind::ConfigInvalid, "cannot build the HTTP client").with_source(HttpError(detail))
            })?;
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                user_agent,
                probe,
                guard,
                hosts: Mutex::new(HashMap::new()),
            }),
            client: Mutex::new(Some(client)),
        })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &WebhookConfig {
        &self.shared.config
    }

    fn lock(&self) -> MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client (a cheap handle on the shared pool), or `Closed`.
    fn client(&self) -> Result<Client, SinkError> {
        self.lock()
            .clone()
            .ok_or_else(|| error(ErrorKind::Closed, "the webhook sink is shut down"))
    }
}

/// The label of a URL: scheme, host, port and path (no user info, no query string).
fn label_of(url: &str) -> String {
    Destination::Webhook(WebhookTarget {
        rate_limit: None,
        signing_secrets: Vec::new(),
        payload_destination: None,
        base64: true,
        url: url.to_owned(),
        headers: Vec::new(),
    })
    .label()
}

#[async_trait]
impl EventSink for WebhookSink {
    fn channel(&self) -> Channel {
        Channel::Webhook
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(MAX_BATCH).ordered()
    }

    /// POSTs every item. Items of one (instance, URL) go one after the other, in batch order, and
    /// stop at the first retryable failure (the rest are reported "not sent", retryable);
    /// different (instance, URL) pairs go concurrently.
    async fn send(&self, batch: &[Delivery]) -> Result<DeliveryReport, SinkError> {
        let client = self.client()?;
        if batch.is_empty() {
            return Ok(DeliveryReport::success());
        }
        let mut report = DeliveryReport::success();
        let mut items = Vec::with_capacity(batch.len());
        for (index, delivery) in batch.iter().enumerate() {
            let Some(target) = delivery.destination.webhook() else {
                report.fail(index, delivery.destination.mismatch(Channel::Webhook));
                continue;
            };
            let key = (delivery.envelope.instance().as_str(), target.url.as_str());
            items.push((key, (index, delivery.clone())));
        }
        let groups: Vec<Vec<(usize, Delivery)>> =
            group_by_key(items).into_iter().map(|(_, group)| group).collect();

        if groups.len() <= 1 {
            for group in groups {
                report.extend(deliver_group(client.clone(), Arc::clone(&self.shared), group).await);
            }
        } else {
            let mut tasks = JoinSet::new();
            let mut members: HashMap<tokio::task::Id, Vec<usize>> = HashMap::new();
            for group in groups {
                let indices = group.iter().map(|(index, _)| *index).collect();
                let task = tasks.spawn(deliver_group(client.clone(), Arc::clone(&self.shared), group));
                members.insert(task.id(), indices);
            }
            // Dropping `tasks` (a cancelled send) aborts the groups still running.
            while let Some(joined) = tasks.join_next_with_id().await {
                match joined {
                    Ok((_, group_failures)) => report.extend(group_failures),
                    Err(e) => {
                        for &index in members.get(&e.id()).map(Vec::as_slice).unwrap_or_default() {
                            report.fail(
                                index,
                                error(ErrorKind::Unexpected, "the delivery task of this item failed")
                                    .with_source(HttpError(e.to_string())),
                            );
                        }
                    }
                }
            }
        }
        Ok(report)
    }

    /// GETs the probe URL if there is one: an answer below 500 means up. Without a probe URL, `Ok`.
    async fn health_check(&self) -> Result<(), SinkError> {
        let client = self.client()?;
        let Some(probe) = &self.shared.probe else {
            return Ok(());
        };
        let raw = self.shared.config.probe_url.as_deref().unwrap_or_default();
        let response = client
            .get(probe.url.clone())
            .header(USER_AGENT, self.shared.user_agent.clone())
            .timeout(self.shared.config.request_timeout.min(PROBE_TIMEOUT))
            .send()
            .await
            .map_err(|e| classify_transport(&probe.label, &e, &url_secrets(raw, &probe.url)))?;
        let status = response.status().as_u16();
        if status < 500 {
            return Ok(());
        }
        let retry_after = retry_after(&response);
        let body = read_prefix(response, classify::EXCERPT_BYTES).await;
        classify(
            &probe.label,
            status,
            retry_after.as_deref(),
            &body,
            SystemTime::now(),
        )
    }

    /// Nothing is buffered: every `send` returns once each item was answered.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Drops the client (idle connections close; requests in flight finish). Idempotent.
    async fn shutdown(&self) -> Result<(), SinkError> {
        self.lock().take();
        Ok(())
    }

    /// Checks the webhooks' targets against the SSRF protection when an instance's settings are
    /// saved, so that a URL into a private or special network is refused then (`Rejected`, naming
    /// the address and how to allow it with `WEBHOOK_ALLOWED_NETWORKS`) rather than at the first
    /// event: an IP-literal host directly, a name resolved (at most 3 s; a name that does not
    /// resolve yet is accepted, as every connection is checked again). One check per host and
    /// port; destinations of other channels and malformed URLs (refused when parsed) are skipped.
    async fn prepare(&self, destinations: &[Destination]) -> Result<(), SinkError> {
        let mut checked = HashSet::new();
        for destination in destinations {
            let Some(target) = destination.webhook() else {
                continue;
            };
            let Ok(url) = Url::parse(&target.url) else {
                continue;
            };
            if !checked.insert(url[url::Position::BeforeHost..url::Position::AfterPort].to_owned()) {
                continue;
            }
            if let Err(refused) = check_url(&self.shared.guard, &target.url).await {
                return Err(error(ErrorKind::Rejected, format!("webhook.url: {refused}")));
            }
        }
        Ok(())
    }
}

/// Sends the items of one (instance, URL), in order, stopping at the first retryable failure.
async fn deliver_group(
    client: Client,
    shared: Arc<Shared>,
    group: Vec<(usize, Delivery)>,
) -> Vec<(usize, SinkError)> {
    let (client, shared) = (&client, &*shared);
    send_in_order(
        Channel::Webhook,
        "destination",
        group.chunks(1),
        |(index, _)| *index,
        |unit| async move {
            let mut failed = Vec::new();
            for (index, delivery) in unit {
                if let Err(e) = deliver(client, shared, delivery).await {
                    failed.push((*index, e));
                }
            }
            failed
        },
    )
    .await
}

/// POSTs one delivery and classifies the outcome.
async fn deliver(client: &Client, shared: &Shared, delivery: &Delivery) -> Result<(), SinkError> {
    let target = delivery
        .destination
        .webhook()
        .ok_or_else(|| delivery.destination.mismatch(Channel::Webhook))?;
    // The label (the URL without its secrets) is only needed for errors: built lazily.
    let label = || delivery.destination.label();
    let url = match Url::parse(&target.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => url,
        _ => {
            return Err(request::parse_url(&target.url, &label(), "the webhook URL")
                .err()
                .unwrap_or_else(|| {
                    error(ErrorKind::ConfigInvalid, "the webhook URL is not an http(s) URL")
                }));
        }
    };
    // Names are checked by the client's resolver; IP literals never reach it.
    if let Some(ip) = literal_ip(&url)
        && let Err(refused) = shared.guard.check(ip)
    {
        return Err(classify::forbidden_error(&label(), &refused));
    }
    // CloudEvents' HTTP binding: the data alone in binary mode, the structured event otherwise.
    let body = match delivery.binary_attributes() {
        Some(_) => evolution_events::Bytes::copy_from_slice(delivery.envelope.data().get().as_bytes()),
        None => delivery.payload(),
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut headers = request::headers(
        &label,
        &shared.user_agent,
        delivery.envelope.id(),
        target,
        &body,
        now,
    )?;
    request::trace_headers(&mut headers, &delivery.envelope);
    request::cloudevent_headers(&mut headers, delivery);
    let limit = shared.host_limit(&url);
    let _permit = limit
        .acquire()
        .await
        .map_err(|_| error(ErrorKind::Closed, "the webhook sink is shut down"))?;
    let response = client
        .post(url.clone())
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| classify_transport(&label(), &e, &url_secrets(&target.url, &url)))?;
    let status = response.status();
    if status.is_success() {
        // Read (a bounded prefix of) the answer so that the connection can be reused.
        read_prefix(response, DRAIN_BYTES).await;
        return Ok(());
    }
    let retry_after = retry_after(&response);
    let body = read_prefix(response, classify::EXCERPT_BYTES).await;
    classify(
        &label(),
        status.as_u16(),
        retry_after.as_deref(),
        &body,
        SystemTime::now(),
    )
}

/// The host of `url` if it is an IP address.
fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// The `Retry-After` header, if it is text.
fn retry_after(response: &Response) -> Option<String> {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads at least `limit` bytes of the body (or all of it, if shorter), giving up after
/// [`DRAIN_TIMEOUT`] or at a read error: the status already decided the outcome.
async fn read_prefix(mut response: Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let read = async {
        while body.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, read).await.is_err() {
        // What arrived in time is enough.
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let sink = WebhookSink::new(WebhookConfig::default()).unwrap();
        assert_eq!(sink.config().request_timeout, Duration::from_secs(60));
        assert_eq!(sink.capabilities(), Capabilities::new(64).ordered());
        assert_eq!(sink.channel(), Channel::Webhook);
        assert_eq!(NAME, Channel::Webhook.to_string());

        for probe in ["ftp://h.example/", "relative", "http://"] {
            let e = WebhookSink::new(WebhookConfig {
                probe_url: Some(probe.into()),
                ..WebhookConfig::default()
            })
            .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{probe}");
        }
        let e = WebhookSink::new(WebhookConfig {
            probe_url: Some("ftp://u:hunter2@h.example/?k=v".into()),
            ..WebhookConfig::default()
        })
        .unwrap_err();
        assert!(
            !e.to_string().contains("hunter2") && !e.to_string().contains("k=v"),
            "{e}"
        );

        let e = WebhookSink::new(WebhookConfig {
            user_agent: "bad\nagent".into(),
            ..WebhookConfig::default()
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        let e = WebhookSink::new(WebhookConfig {
            request_timeout: Duration::ZERO,
            ..WebhookConfig::default()
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
    }

    #[tokio::test]
    async fn prepare_refuses_special_networks_once_per_host() {
        let webhook = |url: &str| {
            Destination::Webhook(WebhookTarget {
                rate_limit: None,
                url: url.to_owned(),
                headers: Vec::new(),
                signing_secrets: Vec::new(),
                payload_destination: None,
                base64: true,
            })
        };
        let sink = WebhookSink::new(WebhookConfig::default()).unwrap();
        let e = sink
            .prepare(&[
                webhook("http://127.0.0.1:9/x/CALL"),
                webhook("http://127.0.0.1:9/x/SEND_MESSAGE"),
            ])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected);
        assert!(!e.is_retryable());
        let text = e.to_string();
        assert!(
            text.contains("webhook.url: 127.0.0.1 is a loopback")
                && text.contains("WEBHOOK_ALLOWED_NETWORKS"),
            "{text}"
        );
        assert!(sink.prepare(&[webhook("https://93.184.215.14/x")]).await.is_ok());
        let allowed = WebhookSink::new(WebhookConfig {
            allowed_networks: crate::network::parse_networks("127.0.0.0/8").unwrap(),
            ..WebhookConfig::default()
        })
        .unwrap();
        assert!(allowed.prepare(&[webhook("http://127.0.0.1:9/x")]).await.is_ok());
    }

    #[tokio::test]
    async fn shutdown_closes() {
        let sink = WebhookSink::new(WebhookConfig::default()).unwrap();
        assert!(sink.health_check().await.is_ok());
        sink.shutdown().await.unwrap();
        sink.shutdown().await.unwrap();
        assert_eq!(sink.send(&[]).await.unwrap_err().kind(), ErrorKind::Closed);
        assert_eq!(sink.health_check().await.unwrap_err().kind(), ErrorKind::Closed);
        assert!(sink.flush().await.is_ok());
    }
}
