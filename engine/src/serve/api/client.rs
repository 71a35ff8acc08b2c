//! The client end of `hoard serve`: a repository address
//! (`https://HOST:PORT/NAMESPACE`), a token, and TLS that trusts either the
//! certificate whose SHA-256 fingerprint the user pinned (as with Proxmox
//! Backup Server's self-signed certificates) or the system's CAs.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{colon_hex, fingerprint, parse_fingerprint, ApiError};
use crate::error::{with_innermost_cause, ErrorKind};
use crate::format::token_list;

/// A server repository: where the server is, and the namespace in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRepo {
    /// `https://HOST:PORT`
    pub server: String,
    /// `a/b`, or "" for the root namespace.
    pub namespace: String,
}

impl RemoteRepo {
    /// Reads `https://HOST[:PORT][/NAMESPACE]`; the port defaults to 8007,
    /// the one Proxmox Backup Server uses.
    pub fn parse(url: &str) -> Result<RemoteRepo, ApiError> {
        let bad = |why: &str| ApiError::Invalid(format!("repository {url:?}: {why}"));
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("must start with https://"))?;
        let (host, namespace) = rest.split_once('/').unwrap_or((rest, ""));
        let namespace = namespace.trim_end_matches('/');
        if host.is_empty() || host.contains(['@', '?', '#']) {
            return Err(bad("no host, or a user, query or fragment in it"));
        }
        if !token_list::valid_namespace(namespace) {
            return Err(bad(
                "the namespace must be up to 8 levels a/b/c of A-Z a-z 0-9 _ -",
            ));
        }
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok());
        let server = if has_port {
            format!("https://{host}")
        } else {
            format!("https://{host}:8007")
        };
        Ok(RemoteRepo {
            server,
            namespace: namespace.to_string(),
        })
    }
}

/// Attempts of a request that failed in transit (connection refused,
/// reset or timed out), with a pause doubling from one second between
/// them. A refusal (an HTTP status) is never retried.
const ATTEMPTS: u32 = 5;

/// A connection to a server, as one token.
pub struct Client {
    http: reqwest::blocking::Client,
    repo: RemoteRepo,
    authorization: zeroize::Zeroizing<String>,
    /// This process's name on the server (format-spec/server.md, "Clients").
    id: String,
    /// A request gave up on the server: the next ones try once, so a
    /// client whose server is gone says so in seconds, not once per call.
    gave_up: std::sync::atomic::AtomicBool,
}

impl Client {
    /// `token` is `NAME:SECRET` as `hoard token create` printed it;
    /// `pinned` the server certificate's fingerprint (None: the system's
    /// CAs decide).
    pub fn new(repo: RemoteRepo, pinned: Option<&str>, token: &str) -> Result<Client, ApiError> {
        let authorization = zeroize::Zeroizing::new(format!("Bearer {}", token.trim()));
        if super::parse_authorization(authorization.as_bytes()).is_none() {
            return Err(ApiError::Invalid(
                "the token must be NAME:SECRET (64 hex digits), as `hoard token create` printed it".into(),
            ));
        }
        let mut builder = reqwest::blocking::Client::builder()
            .http2_prior_knowledge()
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(300))
            .pool_idle_timeout(None)
            .http2_initial_stream_window_size(4 << 20)
            .http2_initial_connection_window_size(16 << 20)
            .http2_max_frame_size(1 << 20)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .http2_keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(text) = pinned {
            let want = parse_fingerprint(text).ok_or_else(|| {
                ApiError::Invalid(format!(
                    "fingerprint {text:?}: must be 64 hex digits (colons allowed), as `hoard serve` printed it"
                ))
            })?;
            builder = builder.tls_backend_preconfigured(pinned_tls(want));
        }
        let http = builder
            .build()
            .map_err(|e| ApiError::Tls(format!("cannot set up the HTTP client: {e}")))?;
        let id = crate::chunking::digest::to_hex(uuid::Uuid::new_v4().as_bytes());
        Ok(Client {
            http,
            repo,
            authorization,
            id,
            gave_up: Default::default(),
        })
    }

    /// The repository this client reaches.
    pub fn repo(&self) -> &RemoteRepo {
        &self.repo
    }

    /// Who the server takes this token for: name, role, namespace.
    pub fn whoami(&self) -> Result<serde_json::Value, ApiError> {
        self.json(reqwest::Method::GET, "whoami", Vec::new())
    }

    /// Sends a request to `/api/v1/PATH` and returns the answer's JSON.
    pub fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<serde_json::Value, ApiError> {
        let bytes = self.call(method, path, body)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.error(path, format!("not a JSON answer: {e}"), ErrorKind::Damaged))
    }

    /// Sends a request to `/api/v1/PATH` and returns the answer's body;
    /// retries what failed in transit ([`ATTEMPTS`]), and says so when it
    /// gives up.
    pub fn call(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> Result<bytes::Bytes, ApiError> {
        let url = format!("{}/api/v1/{path}", self.repo.server);
        let body = bytes::Bytes::from(body);
        let mut pause = Duration::from_secs(1);
        let gave_up = &self.gave_up;
        let attempts = match gave_up.load(std::sync::atomic::Ordering::Relaxed) {
            true => 1,
            false => ATTEMPTS,
        };
        for attempt in 1.. {
            let sent = self
                .http
                .request(method.clone(), &url)
                .header(reqwest::header::AUTHORIZATION, self.authorization.as_str())
                .header(super::wire::CLIENT_HEADER, &self.id)
                .header(super::wire::NAMESPACE_HEADER, &self.repo.namespace)
                .body(body.clone())
                .send()
                .and_then(|r| {
                    let status = r.status();
                    r.bytes().map(|b| (status, b))
                });
            let (status, bytes) = match sent {
                Ok(answer) => answer,
                Err(e) => {
                    let mut text = with_innermost_cause(&e.without_url());
                    if text.contains("UnknownIssuer") {
                        text.push_str(" (a self-signed server: pin its fingerprint with --fingerprint)");
                        return Err(self.error(path, text, ErrorKind::Auth));
                    }
                    if text.contains("fingerprint") || attempt >= attempts {
                        if attempt > 1 {
                            text = format!("gave up after {attempt} attempts: {text}");
                        }
                        gave_up.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Err(self.error(path, text, ErrorKind::Io));
                    }
                    tracing::warn!(%url, attempt, error = %text, "request failed in transit; retrying");
                    std::thread::sleep(pause);
                    pause *= 2;
                    continue;
                }
            };
            gave_up.store(false, std::sync::atomic::Ordering::Relaxed);
            if status.is_success() {
                return Ok(bytes);
            }
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            let kind = match status.as_u16() {
                401 | 403 => ErrorKind::Auth,
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Busy,
                400 | 413 | 501 => ErrorKind::Invalid,
                _ => ErrorKind::Other,
            };
            return Err(self.error(path, format!("{status}: {message}"), kind));
        }
        unreachable!("the loop returns")
    }

    fn error(&self, path: &str, detail: String, kind: ErrorKind) -> ApiError {
        ApiError::Remote {
            url: format!("{}/api/v1/{path}", self.repo.server),
            detail,
            kind,
        }
    }
}

fn pinned_tls(want: [u8; 32]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { want, provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// Trusts exactly the certificate with the pinned fingerprint. Its
/// signature over the handshake is still checked, so only the holder of
/// that certificate's key passes.
#[derive(Debug)]
struct Pinned {
    want: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if parse_fingerprint(&got) == Some(self.want) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has fingerprint {got}, not the pinned {}",
                colon_hex(&self.want)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_addresses() {
        let r = RemoteRepo::parse("https://backup.example:9000/cluster/node1/").unwrap();
        assert_eq!(r.server, "https://backup.example:9000");
        assert_eq!(r.namespace, "cluster/node1");
        assert_eq!(RemoteRepo::parse("https://h").unwrap().server, "https://h:8007");
        assert_eq!(
            RemoteRepo::parse("https://[::1]:8100/a").unwrap().server,
            "https://[::1]:8100"
        );
        assert_eq!(
            RemoteRepo::parse("https://[::1]").unwrap().server,
            "https://[::1]:8007"
        );
        for bad in [
            "http://h/a",
            "https:///a",
            "https://u@h/a",
            "https://h/a//b",
            "https://h/-x",
        ] {
            assert!(RemoteRepo::parse(bad).is_err(), "{bad}");
        }
    }
}
