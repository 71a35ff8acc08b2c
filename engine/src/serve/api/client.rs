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

/// A connection to a server, as one token.
pub struct Client {
    http: reqwest::blocking::Client,
    repo: RemoteRepo,
    authorization: zeroize::Zeroizing<String>,
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
            .timeout(Duration::from_secs(300));
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
        Ok(Client {
            http,
            repo,
            authorization,
        })
    }

    /// Who the server takes this token for: name, role, namespace.
    pub fn whoami(&self) -> Result<serde_json::Value, ApiError> {
        self.get("/api/v1/whoami")
    }

    fn get(&self, path: &str) -> Result<serde_json::Value, ApiError> {
        let url = format!("{}{path}", self.repo.server);
        let remote = |detail: String, kind: ErrorKind| ApiError::Remote {
            url: url.clone(),
            detail,
            kind,
        };
        let response = self
            .http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.as_str())
            .send()
            .map_err(|e| {
                let mut text = with_innermost_cause(&e.without_url());
                if text.contains("UnknownIssuer") {
                    text.push_str(" (a self-signed server: pin its fingerprint with --fingerprint)");
                }
                remote(text, ErrorKind::Io)
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .map_err(|e| remote(with_innermost_cause(&e.without_url()), ErrorKind::Io))?;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| remote(format!("{status}, not a JSON answer: {e}"), ErrorKind::Damaged))?;
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"].as_str().unwrap_or("no message").to_string();
        let kind = match status.as_u16() {
            401 | 403 => ErrorKind::Auth,
            404 => ErrorKind::NotFound,
            _ => ErrorKind::Other,
        };
        Err(remote(format!("{status}: {message}"), kind))
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
