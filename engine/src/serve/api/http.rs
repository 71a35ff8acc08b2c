//! The API over HTTP/2 with TLS, on tokio (format-spec/server.md). Every
//! request carries a token; the token list is read for each one, so a
//! revoked token is refused from the next request on. Every refusal is an
//! HTTP status with a JSON message, and a `tracing` event (the binary
//! chooses how events are written).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::answer::{Refusal, Reply};
use super::clients::Served;
use super::service::{route, Call};
use super::{parse_authorization, wire, ApiError, Identity, ServerDir};
use crate::store::Store;

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping server lets running requests finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The largest request body: a chunk batch, or an index file (that of an
/// 8 TiB image at 4 MiB chunks is 64 MiB).
const MAX_BODY: usize = 256 << 20;

/// What a server serves.
pub struct ServeOptions {
    pub dir: ServerDir,
    /// The store it owns, open for the server's whole life.
    pub store: &'static Store,
    /// The store as the user named it.
    pub label: String,
    pub listen: SocketAddr,
    /// A client silent this long is forgotten, and its unpublished
    /// backups aborted (clients ping four times as often).
    pub idle_timeout: Duration,
}

/// The server's TLS configuration: its identity, HTTP/2 only, no client
/// certificates (tokens authenticate clients).
pub fn tls_config(identity: Identity) -> Result<Arc<rustls::ServerConfig>, ApiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)
        .map_err(|e| ApiError::Tls(format!("the server's certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Serves until SIGTERM or SIGINT. `ready` is told the bound address once
/// the server accepts connections.
pub fn run(
    opts: ServeOptions,
    tls: Arc<rustls::ServerConfig>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ApiError> {
    let io = |source| ApiError::Io {
        path: opts.listen.to_string().into(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io)?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let listener = tokio::net::TcpListener::bind(opts.listen).await.map_err(io)?;
        let bound = listener.local_addr().map_err(io)?;
        tracing::info!(listen = %bound, store = %opts.label, "serving");
        ready(bound);
        let mut term = signal(SignalKind::terminate()).map_err(io)?;
        let mut int = signal(SignalKind::interrupt()).map_err(io)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let label = opts.label.clone();
        let opts_idle = opts.idle_timeout;
        let served = Arc::new(Served::new(opts.store, opts.dir, opts.label, opts.idle_timeout));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let reaper = tokio::spawn({
            let (served, idle) = (served.clone(), opts_idle);
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let served = served.clone();
                    let _ = tokio::task::spawn_blocking(move || served.reap(idle)).await;
                }
            }
        });
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (socket, peer) = tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
                // Finished connections are reaped as they end.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (acceptor, served, stopping) = (acceptor.clone(), served.clone(), stopping.clone());
            connections.spawn(serve_connection(acceptor, served, socket, peer, stopping));
        }
        tracing::info!(store = %label, connections = connections.len(), "stopping");
        // Every connection is told to take no new requests (HTTP/2
        // GOAWAY); running ones finish, then the connection closes and
        // aborts the backups it did not publish. Publishing is one rename,
        // so nothing is ever half-published.
        let _ = stop.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                connections = connections.len(),
                "requests still running after the grace period: aborted"
            );
            connections.abort_all();
            while connections.join_next().await.is_some() {}
        }
        reaper.abort();
        let _ = tokio::task::spawn_blocking(move || served.forget_all()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    served: Arc<Served>,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let _ = socket.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::warn!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::warn!(%peer, "TLS handshake timed out"),
    };
    let service = hyper::service::service_fn(move |req| {
        let served = served.clone();
        async move { Ok::<_, Infallible>(handle(served, peer, req).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .max_send_buf_size(4 << 20);
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        tracing::info!(%peer, error = %e, "connection ended");
    }
}

async fn handle(served: Arc<Served>, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let refuse = |status: StatusCode, message: String| {
        tracing::warn!(%peer, status = status.as_u16(), %method, %path, reason = %message, "refused");
        json(status, &serde_json::json!({ "error": message }))
    };
    let Some((name, secret)) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| parse_authorization(v.as_bytes()))
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no token: send the header \"Authorization: Bearer NAME:SECRET\"".into(),
        );
    };
    let tokens = match served.dir.tokens() {
        Ok(t) => t,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some(token) = tokens.authenticate(&name, &secret).cloned() else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("token {name:?} is unknown, revoked, or its secret is wrong"),
        );
    };
    let Some(api_path) = path.strip_prefix("/api/v1/").map(str::to_string) else {
        return refuse(StatusCode::NOT_FOUND, format!("no endpoint {method} {path}"));
    };
    let namespace = match req.headers().get(wire::NAMESPACE_HEADER).map(|v| v.to_str()) {
        None => String::new(),
        Some(Ok(ns)) if crate::format::token_list::valid_namespace(ns) => ns.to_string(),
        Some(_) => return refuse(StatusCode::BAD_REQUEST, "a malformed namespace header".into()),
    };
    let client = req
        .headers()
        .get(wire::CLIENT_HEADER)
        .map(|v| v.to_str().unwrap_or("").to_string());
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")),
    };
    // The client's state is taken only once the body is in: a request
    // whose body never comes holds nothing of it.
    let conn = match served.client(client.as_deref(), &token.name) {
        Ok(c) => c,
        Err(Refusal { status, message }) => return refuse(status, message),
    };
    let answered = tokio::task::spawn_blocking({
        let method = method.clone();
        move || {
            let call = Call {
                method: &method,
                path: &api_path,
                namespace: &namespace,
                client: client.as_deref(),
                token: &token,
                body: &body,
            };
            route(&served, &conn, &call)
        }
    })
    .await;
    match answered {
        Ok(Ok(Reply::Json(v))) => json(StatusCode::OK, &v),
        Ok(Ok(Reply::Bytes(b))) => {
            let mut response = Response::new(Full::new(Bytes::from(b)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Ok(Err(Refusal { status, message })) => refuse(status, message),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request failed: {e}"),
        ),
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
