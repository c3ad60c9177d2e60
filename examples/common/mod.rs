//! What the examples share: a webhook receiver on a loopback port (a real one is another service).

use std::net::SocketAddr;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::sync::mpsc;

/// One request the receiver got.
#[derive(Debug)]
pub(crate) struct Received {
    /// Its path.
    pub(crate) path: String,
    /// Its headers.
    pub(crate) headers: HeaderMap,
    /// Its body (the event's JSON).
    pub(crate) body: String,
}

/// Serves `app` on a free loopback port until the process ends; returns the address.
pub(crate) async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// A webhook receiver at `address/{path}`: hands every request to the returned channel and
/// answers with `answer(path, attempt)` (the attempt counts the requests to that path from 1).
pub(crate) async fn receiver(
    answer: impl Fn(&str, usize) -> StatusCode + Clone + Send + Sync + 'static,
) -> std::io::Result<(SocketAddr, mpsc::UnboundedReceiver<Received>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let attempts = std::sync::Arc::new(std::sync::Mutex::new(
        std::collections::HashMap::<String, usize>::new(),
    ));
    let app = Router::new().route(
        "/{*path}",
        post(
            move |axum::extract::Path(path): axum::extract::Path<String>,
                  headers: HeaderMap,
                  body: String| {
                let attempt = {
                    let mut attempts = attempts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let n = attempts.entry(path.clone()).or_default();
                    *n += 1;
                    *n
                };
                let status = answer(&path, attempt);
                let _ignored = tx.send(Received { path, headers, body });
                async move { status }
            },
        ),
    );
    Ok((serve(app).await?, rx))
}
