//! [`WebsocketLayer`]: the Socket.IO endpoint as a tower layer, which keeps its sink attached
//! while it (or a service it built) is alive.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use socketioxide::layer::SocketIoLayer;
use tower_layer::Layer;
use tower_service::Service;

/// Held by the layer and every service built from it; the sink watches it (weakly) to know
/// whether its endpoint is mounted on a live router.
#[derive(Debug)]
pub(crate) struct Attachment;

/// The Socket.IO endpoint of a [`WebsocketSink`](crate::WebsocketSink): a tower layer to put on
/// the server's HTTP router (`axum::Router::layer`). It answers requests under the configured
/// path (`/socket.io`) and passes every other request to the inner service.
///
/// The sink delivers only while this layer, or a router it was applied to, is alive: once the
/// router is dropped (the server stopped serving) sends fail as `Unavailable` and stay queued.
#[derive(Clone)]
pub struct WebsocketLayer {
    inner: SocketIoLayer,
    attachment: Arc<Attachment>,
}

impl WebsocketLayer {
    pub(crate) fn new(inner: SocketIoLayer, attachment: Arc<Attachment>) -> Self {
        Self { inner, attachment }
    }
}

impl fmt::Debug for WebsocketLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsocketLayer").finish_non_exhaustive()
    }
}

impl<S: Clone> Layer<S> for WebsocketLayer {
    type Service = WebsocketService<<SocketIoLayer as Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        WebsocketService {
            inner: self.inner.layer(inner),
            _attachment: Arc::clone(&self.attachment),
        }
    }
}

/// The service [`WebsocketLayer`] builds: socketioxide's, plus the attachment.
#[derive(Clone)]
pub struct WebsocketService<S> {
    inner: S,
    _attachment: Arc<Attachment>,
}

impl<S> fmt::Debug for WebsocketService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsocketService").finish_non_exhaustive()
    }
}

impl<R, S: Service<R>> Service<R> for WebsocketService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.inner.call(req)
    }
}
