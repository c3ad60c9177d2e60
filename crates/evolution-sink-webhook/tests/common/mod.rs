//! A real HTTP receiver for the tests: an axum server on `127.0.0.1:0` that records every request
//! (method, path, headers, body, in arrival order) and answers as a test tells it to.

#![allow(dead_code, reason = "each test crate uses a different part of the receiver")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One request as it reached the receiver.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    /// Position in arrival order, from 0, across every path.
    pub(crate) order: usize,
    pub(crate) method: Method,
    /// Path and query.
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Recorded {
    /// A header's value as text (`""` when absent or not text).
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: String,
    /// Waited before answering.
    pub(crate) delay: Duration,
}

impl Reply {
    /// `200 OK` with body `ok`.
    pub(crate) fn ok() -> Self {
        Self::status(200)
    }

    /// This status, body `ok`.
    pub(crate) fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: "ok".to_owned(),
            delay: Duration::ZERO,
        }
    }

    /// Adds a header.
    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Replaces the body.
    pub(crate) fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// Answers after `delay`.
    pub(crate) fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// Decides the reply to a request; the `usize` is how many requests reached that path so far,
/// this one included (1 for the first).
pub(crate) type Responder = Arc<dyn Fn(&Recorded, usize) -> Reply + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<Recorded>>,
    arrivals: watch::Sender<usize>,
    responder: Responder,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<Recorded>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running receiver; stops accepting connections when dropped.
pub(crate) struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Receiver {
    /// A receiver answering `200 ok` to everything.
    pub(crate) async fn start() -> Self {
        Self::with(|_, _| Reply::ok()).await
    }

    /// A receiver answering as `responder` says.
    pub(crate) async fn with(responder: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) -> Self {
        let (arrivals, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            arrivals,
            responder: Arc::new(responder),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .fallback(record)
            .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if axum::serve(listener, app).await.is_err() {
                // The test is over or the listener failed: nothing to report to.
            }
        });
        Self { addr, shared, server }
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Every request so far to `path` (path and query, exactly), in arrival order.
    pub(crate) fn requests(&self, path: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Every request so far, in arrival order.
    pub(crate) fn all(&self) -> Vec<Recorded> {
        self.shared.lock().clone()
    }

    /// The requests to `path` once at least `expected` arrived, or after `within` with what
    /// there is.
    pub(crate) async fn wait_for(&self, path: &str, expected: usize, within: Duration) -> Vec<Recorded> {
        let mut arrivals = self.shared.arrivals.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = self.requests(path);
            if seen.len() >= expected {
                return seen;
            }
            match tokio::time::timeout_at(deadline, arrivals.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.requests(path),
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let (recorded, nth) = {
        let mut requests = shared.lock();
        let recorded = Recorded {
            order: requests.len(),
            method,
            path,
            headers,
            body,
        };
        let nth = requests.iter().filter(|r| r.path == recorded.path).count() + 1;
        requests.push(recorded.clone());
        (recorded, nth)
    };
    shared.arrivals.send_modify(|n| *n += 1);
    let reply = (shared.responder)(&recorded, nth);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut headers = HeaderMap::new();
    for (name, value) in reply.headers {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    (StatusCode::from_u16(reply.status).unwrap(), headers, reply.body).into_response()
}
