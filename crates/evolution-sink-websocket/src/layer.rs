//! [`WebsocketLayer`]: the Socket.IO endpoint as a tower layer, which keeps its sink attached
//! while it (or a service it built) is alive.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::Request;
use socketioxide::layer::SocketIoLayer;
use socketioxide::service::SocketIoService;
use tower_layer::Layer;
use tower_service::Service;

#[cfg(feature = "redis")]
use crate::redis_adapter::RedisAdapter;

/// Held by the layer and every service built from it; the sink watches it (weakly) to know
/// whether its endpoint is mounted on a live router.
#[derive(Debug)]
pub(crate) struct Attachment;

/// socketioxide's layer, on the adapter the sink was built with.
#[derive(Clone)]
pub(crate) enum Inner {
    /// This server's clients only.
    Local(SocketIoLayer),
    /// Every replica's clients, through Redis.
    #[cfg(feature = "redis")]
    Redis(SocketIoLayer<RedisAdapter>),
}

/// The Socket.IO endpoint of a [`WebsocketSink`](crate::WebsocketSink): a tower layer to put on
/// the server's HTTP router (`axum::Router::layer`). It answers requests under the configured
/// path (`/socket.io`) and passes every other request to the inner service.
///
/// The sink delivers only while this layer, or a router it was applied to, is alive: once the
/// router is dropped (the server stopped serving) sends fail as `Unavailable` and stay queued.
#[derive(Clone)]
pub struct WebsocketLayer {
    inner: Inner,
    attachment: Arc<Attachment>,
}

impl WebsocketLayer {
    pub(crate) fn new(inner: Inner, attachment: Arc<Attachment>) -> Self {
        Self { inner, attachment }
    }
}

impl fmt::Debug for WebsocketLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsocketLayer").finish_non_exhaustive()
    }
}

impl<S: Clone> Layer<S> for WebsocketLayer {
    type Service = WebsocketService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = match &self.inner {
            Inner::Local(layer) => InnerService::Local(layer.layer(inner)),
            #[cfg(feature = "redis")]
            Inner::Redis(layer) => InnerService::Redis(layer.layer(inner)),
        };
        WebsocketService {
            inner,
            _attachment: Arc::clone(&self.attachment),
        }
    }
}

#[derive(Clone)]
enum InnerService<S: Clone> {
    Local(SocketIoService<S>),
    #[cfg(feature = "redis")]
    Redis(SocketIoService<S, RedisAdapter>),
}

/// The service [`WebsocketLayer`] builds around the inner service `S`: socketioxide's, plus the
/// attachment.
#[derive(Clone)]
pub struct WebsocketService<S: Clone> {
    inner: InnerService<S>,
    _attachment: Arc<Attachment>,
}

impl<S: Clone> fmt::Debug for WebsocketService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsocketService").finish_non_exhaustive()
    }
}

/// What socketioxide's service answers, on either adapter (the types do not depend on it).
type Local<S> = SocketIoService<S>;

#[cfg(not(feature = "redis"))]
impl<B, S: Clone> Service<Request<B>> for WebsocketService<S>
where
    Local<S>: Service<Request<B>>,
{
    type Response = <Local<S> as Service<Request<B>>>::Response;
    type Error = <Local<S> as Service<Request<B>>>::Error;
    type Future = <Local<S> as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.inner {
            InnerService::Local(svc) => svc.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match &mut self.inner {
            InnerService::Local(svc) => svc.call(req),
        }
    }
}

#[cfg(feature = "redis")]
impl<B, S: Clone> Service<Request<B>> for WebsocketService<S>
where
    Local<S>: Service<Request<B>>,
    SocketIoService<S, RedisAdapter>: Service<
            Request<B>,
            Response = <Local<S> as Service<Request<B>>>::Response,
            Error = <Local<S> as Service<Request<B>>>::Error,
            Future = <Local<S> as Service<Request<B>>>::Future,
        >,
{
    type Response = <Local<S> as Service<Request<B>>>::Response;
    type Error = <Local<S> as Service<Request<B>>>::Error;
    type Future = <Local<S> as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.inner {
            InnerService::Local(svc) => svc.poll_ready(cx),
            InnerService::Redis(svc) => svc.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match &mut self.inner {
            InnerService::Local(svc) => svc.call(req),
            InnerService::Redis(svc) => svc.call(req),
        }
    }
}
