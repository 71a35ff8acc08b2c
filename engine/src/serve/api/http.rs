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
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{parse_authorization, ApiError, Identity, ServerDir};

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a server serves.
pub struct ServeOptions {
    pub dir: ServerDir,
    /// The store it owns, as the user named it.
    pub store: String,
    pub listen: SocketAddr,
}

struct State {
    dir: ServerDir,
    store: String,
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
        tracing::info!(listen = %bound, store = %opts.store, "serving");
        ready(bound);
        let mut term = signal(SignalKind::terminate()).map_err(io)?;
        let mut int = signal(SignalKind::interrupt()).map_err(io)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let state = Arc::new(State {
            dir: opts.dir,
            store: opts.store,
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
            let (acceptor, state) = (acceptor.clone(), state.clone());
            connections.spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::warn!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::warn!(%peer, "TLS handshake timed out"),
                };
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, peer, req)) }
                });
                if let Err(e) = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    tracing::info!(%peer, error = %e, "connection ended");
                }
            });
        }
        // The API writes nothing yet, so open connections are simply
        // closed; nothing can be left half-done by it.
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        tracing::info!("stopped");
        Ok(())
    })
}

fn handle(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
    let tokens = match state.dir.tokens() {
        Ok(t) => t,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some(token) = tokens.authenticate(&name, &secret) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("token {name:?} is unknown, revoked, or its secret is wrong"),
        );
    };
    match (&method, path.as_str()) {
        (&Method::GET, "/api/v1/whoami") => json(
            StatusCode::OK,
            &serde_json::json!({
                "name": token.name,
                "role": token.role.name(),
                "namespace": token.namespace,
                "store": state.store,
            }),
        ),
        _ => refuse(StatusCode::NOT_FOUND, format!("no endpoint {method} {path}")),
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
