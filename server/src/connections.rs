//! Accepting and serving HTTP/1.1 connections, with the limits a server that faces the internet
//! needs: a client that stalls while sending a request head or body is disconnected, and a
//! shutdown finishes the requests in flight without waiting on connections that carry none.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

/// How long the server waits on a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest time to receive a whole request head, counted from the connection's start or
    /// the previous answer; a connection idle for this long between requests is closed too.
    pub header_read: Duration,
    /// Longest pause while a request body arrives; then the request is answered `408`.
    pub body_idle: Duration,
    /// Longest time a shutdown waits for the requests in flight before closing their
    /// connections (each request then counts as failed for its client, who may resend it).
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    /// 30 s for a head and for a pause in a body, as common proxies (nginx's
    /// `client_header_timeout` and `client_body_timeout` are 60 s); 20 s of shutdown grace,
    /// inside systemd's default stop timeout.
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(30),
            body_idle: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// The body-idle timeout, carried to the handlers that read bodies as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct BodyIdleTimeout(pub Duration);

/// How long a connection with no request in flight is given after a shutdown starts, to flush
/// an answer already written.
const FLUSH_GRACE: Duration = Duration::from_millis(500);

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets the
/// requests in flight finish (for at most [`Timeouts::shutdown_grace`]) and returns.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    timeouts: Timeouts,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(
                        router.clone(),
                        TokioIo::new(stream),
                        peer,
                        stop_rx.clone(),
                        timeouts,
                    ));
                }
                Err(e) => {
                    // Out of file descriptors, most often: wait for connections to end rather
                    // than spin.
                    tracing::error!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(());
    let deadline = Instant::now() + timeouts.shutdown_grace;
    while tokio::time::timeout_at(deadline, connections.join_next())
        .await
        .is_ok_and(|joined| joined.is_some())
    {}
    if !connections.is_empty() {
        tracing::warn!(
            connections = connections.len(),
            "closing connections whose requests did not finish within the shutdown grace"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Serves one connection until it ends, or until a shutdown leaves it with nothing in flight.
async fn connection(
    router: Router,
    io: TokioIo<tokio::net::TcpStream>,
    peer: SocketAddr,
    mut stop: watch::Receiver<()>,
    timeouts: Timeouts,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&in_flight);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        request
            .extensions_mut()
            .insert(BodyIdleTimeout(timeouts.body_idle));
        let guard = InFlight::enter(&counter);
        let answer = router.clone().oneshot(request);
        async move {
            let response = answer.await;
            drop(guard);
            response
        }
    });
    let mut conn = pin!(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.header_read)
            .serve_connection(io, service)
    );
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.changed() => {}
    }
    // Answers in progress are finished; then the connection closes. One that carries no
    // request (idle, or a client still sending a head) is closed without waiting on it.
    conn.as_mut().graceful_shutdown();
    loop {
        if in_flight.load(Ordering::Acquire) > 0 {
            let _ = conn.as_mut().await;
            return;
        }
        let ended = tokio::time::timeout(FLUSH_GRACE, conn.as_mut())
            .await
            .is_ok();
        if ended || in_flight.load(Ordering::Acquire) == 0 {
            return;
        }
    }
}

/// Counts a request in flight on its connection until the guard is dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
