//! `hoard serve`: one backup server for many hosts (format-spec/server.md).
//! Its directory (`/var/lib/hoard/server` by default) holds its TLS
//! identity, made on first start, and its API tokens; `http` serves the API
//! over HTTP/2 with TLS and `client` is the other end.

mod answer;
mod backups;
pub mod client;
mod clients;
pub mod http;
mod remote_read;
mod remote_sink;
pub mod remote_store;
mod server_objects;
pub(crate) mod service;
pub mod wire;

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg, OFlag};

use crate::error::{Classify, Context, ErrorKind};
use crate::format::token_list;
pub use crate::format::token_list::{Role, Token, TokenList};
use crate::private_fs::{open_in, private_dir_all, replace_in};

/// A server's answer as the store seam reports it: a refusal for the
/// token's role stays recognisable ([`StoreError::is_refused`]).
pub(crate) fn store_error(e: ApiError) -> crate::store::StoreError {
    let kind = match &e {
        ApiError::Remote {
            kind: ErrorKind::Auth,
            ..
        } => io::ErrorKind::PermissionDenied,
        ApiError::Remote {
            kind: ErrorKind::NotFound,
            ..
        } => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    crate::store::StoreError::Remote(io::Error::new(kind, e.to_string()))
}

pub(crate) const CERT_FILE: &str = "server-cert.pem";
pub(crate) const KEY_FILE: &str = "server-key.pem";
pub(crate) const TOKENS_FILE: &str = "tokens.json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no token named {0:?}")]
    NoToken(String),
    #[error("{0}")]
    Tls(String),
    #[error("{url}: {detail}")]
    Remote {
        url: String,
        detail: String,
        kind: ErrorKind,
    },
}

impl Classify for ApiError {
    fn kind(&self) -> ErrorKind {
        match self {
            ApiError::Io { source, .. } => crate::error::io_kind(source),
            ApiError::Malformed { .. } => ErrorKind::Damaged,
            ApiError::Invalid(_) | ApiError::Tls(_) => ErrorKind::Invalid,
            ApiError::NoToken(_) => ErrorKind::NotFound,
            ApiError::Remote { kind, .. } => *kind,
        }
    }

    fn context(&self) -> Context {
        match self {
            ApiError::Io { path, .. } | ApiError::Malformed { path, .. } => Context::path(path),
            _ => Context::default(),
        }
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> ApiError + '_ {
    move |source| ApiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The server's directory: its identity and tokens.
#[derive(Clone, Debug)]
pub struct ServerDir {
    path: PathBuf,
}

/// A token as made: the string a client presents (`NAME:SECRET`), shown
/// once and stored nowhere.
pub struct NewToken {
    pub token: Token,
    pub secret: String,
}

impl ServerDir {
    pub fn new(path: &Path) -> ServerDir {
        ServerDir {
            path: path.to_path_buf(),
        }
    }

    /// Where a server keeps its state unless told: `/var/lib/hoard/server`.
    pub fn default_path() -> PathBuf {
        PathBuf::from("/var/lib/hoard/server")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory, created 0700 (with its parents) if absent, refused if
    /// it is someone else's or open to others' writes.
    fn open(&self) -> Result<OwnedFd, ApiError> {
        private_dir_all(&self.path).map_err(io_err(&self.path))
    }

    /// The tokens as they are now (none if the file does not exist). Read
    /// on every request, so a revocation holds at once.
    pub fn tokens(&self) -> Result<TokenList, ApiError> {
        let path = self.path.join(TOKENS_FILE);
        match fs::read(&path) {
            Ok(bytes) => TokenList::parse(&bytes).map_err(|detail| ApiError::Malformed { path, detail }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TokenList::default()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Changes the token list under its lock; `f` returns what to report.
    fn change_tokens<T>(&self, f: impl FnOnce(&mut TokenList) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let dir = self.open()?;
        let lock_path = self.path.join("tokens.lock");
        let lock = open_in(&dir, "tokens.lock", OFlag::empty()).map_err(io_err(&lock_path))?;
        let _lock =
            Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| io_err(&lock_path)(e.into()))?;
        let mut list = self.tokens()?;
        let out = f(&mut list)?;
        replace_in(&dir, TOKENS_FILE, &list.encode()).map_err(io_err(&self.path.join(TOKENS_FILE)))?;
        Ok(out)
    }

    /// Makes a token; its secret is returned once and only its hash kept.
    pub fn create_token(&self, name: &str, role: Role, namespace: &str) -> Result<NewToken, ApiError> {
        if !token_list::valid_name(name) {
            return Err(ApiError::Invalid(format!(
                "invalid token name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with - or ."
            )));
        }
        if !token_list::valid_namespace(namespace) {
            return Err(ApiError::Invalid(format!(
                "invalid namespace {namespace:?}: up to 8 levels a/b/c of 1 to 32 A-Z a-z 0-9 _ -"
            )));
        }
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret[..])
            .map_err(|_| ApiError::Invalid("the system's random source failed".into()))?;
        let token = Token {
            name: name.to_string(),
            role,
            namespace: namespace.to_string(),
            hash: token_list::hash_secret(&secret),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        self.change_tokens(|list| {
            if list.tokens.iter().any(|t| t.name == name) {
                return Err(ApiError::Invalid(format!(
                    "a token named {name:?} exists; revoke it first"
                )));
            }
            list.tokens.push(token.clone());
            Ok(())
        })?;
        let secret = format!("{name}:{}", crate::chunking::digest::to_hex(&secret[..]));
        Ok(NewToken { token, secret })
    }

    /// Removes a token: the next request that presents it is refused.
    pub fn revoke_token(&self, name: &str) -> Result<Token, ApiError> {
        self.change_tokens(|list| {
            let at = list
                .tokens
                .iter()
                .position(|t| t.name == name)
                .ok_or_else(|| ApiError::NoToken(name.to_string()))?;
            Ok(list.tokens.remove(at))
        })
    }

    /// The server's certificate and key (PEM), made on first use: a
    /// self-signed certificate for `names` (host names or addresses).
    pub fn identity(&self, names: &[String]) -> Result<Identity, ApiError> {
        let dir = self.open()?;
        let cert_path = self.path.join(CERT_FILE);
        let key_path = self.path.join(KEY_FILE);
        if !cert_path.exists() {
            let made = rcgen::generate_simple_self_signed(names.to_vec())
                .map_err(|e| ApiError::Tls(format!("cannot make a certificate: {e}")))?;
            let key = zeroize::Zeroizing::new(made.key_pair.serialize_pem());
            replace_in(&dir, KEY_FILE, key.as_bytes()).map_err(io_err(&key_path))?;
            replace_in(&dir, CERT_FILE, made.cert.pem().as_bytes()).map_err(io_err(&cert_path))?;
        }
        Identity::load(&cert_path, &key_path)
    }
}

/// A TLS identity: certificate chain, key, and the SHA-256 fingerprint of
/// the certificate that clients pin.
pub struct Identity {
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    pub fingerprint: String,
}

impl Identity {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, ApiError> {
        use rustls::pki_types::pem::PemObject;
        let bad = |path: &Path, detail: String| ApiError::Malformed {
            path: path.to_path_buf(),
            detail,
        };
        let certs =
            crate::serve::export::tls::pem_certs(cert_path).map_err(|detail| bad(cert_path, detail))?;
        let fingerprint = fingerprint(&certs[0]);
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key_path)
            .map_err(|e| bad(key_path, e.to_string()))?;
        Ok(Identity {
            certs,
            key,
            fingerprint,
        })
    }
}

/// SHA-256 of a certificate (DER), as lower-case hex pairs joined by `:`,
/// the way Proxmox Backup Server prints it.
pub fn fingerprint(der: &[u8]) -> String {
    colon_hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Bytes as lower-case hex pairs joined by `:`.
fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A fingerprint as a user may type it: 64 hex digits, with or without
/// colons, either case; None if it is not one.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    crate::chunking::digest::from_hex::<32>(&hex)
}

/// The `Authorization` header a client sends: `Bearer NAME:SECRET`, SECRET
/// 64 lower-case hex digits. None for anything else.
pub fn parse_authorization(value: &[u8]) -> Option<(String, zeroize::Zeroizing<[u8; 32]>)> {
    let text = std::str::from_utf8(value).ok()?;
    let rest = text.strip_prefix("Bearer ")?;
    let (name, secret) = rest.split_once(':')?;
    if !token_list::valid_name(name) {
        return None;
    }
    let secret = zeroize::Zeroizing::new(crate::chunking::digest::from_hex::<32>(secret)?);
    Some((name.to_string(), secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_made_once_stored_hashed_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerDir::new(&dir.path().join("server"));
        let made = server
            .create_token("node1", Role::Backup, "cluster/node1")
            .unwrap();
        let (name, secret) = parse_authorization(format!("Bearer {}", made.secret).as_bytes()).unwrap();
        let list = server.tokens().unwrap();
        assert_eq!(
            list.authenticate(&name, &secret).map(|t| t.role),
            Some(Role::Backup)
        );
        let stored = fs::read_to_string(server.path().join(TOKENS_FILE)).unwrap();
        assert!(!stored.contains(made.secret.split_once(':').unwrap().1));
        assert!(server.create_token("node1", Role::Reader, "").is_err());
        assert!(server.create_token("-x", Role::Reader, "").is_err());
        server.revoke_token("node1").unwrap();
        assert!(server.tokens().unwrap().authenticate(&name, &secret).is_none());
        assert!(matches!(server.revoke_token("node1"), Err(ApiError::NoToken(_))));
    }

    #[test]
    fn identity_is_made_once_and_fingerprints_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerDir::new(dir.path());
        let a = server.identity(&["localhost".into()]).unwrap();
        let b = server.identity(&["other".into()]).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        assert!(parse_fingerprint(&a.fingerprint).is_some());
        assert!(parse_fingerprint(&a.fingerprint.to_uppercase().replace(':', "")).is_some());
        assert!(parse_fingerprint("ab:cd").is_none());
    }

    #[test]
    fn authorization_headers() {
        let hex = "ab".repeat(32);
        assert!(parse_authorization(format!("Bearer n1:{hex}").as_bytes()).is_some());
        assert!(parse_authorization(format!("Basic n1:{hex}").as_bytes()).is_none());
        assert!(parse_authorization(format!("Bearer -n:{hex}").as_bytes()).is_none());
        assert!(parse_authorization(format!("Bearer n1:{}", hex.to_uppercase()).as_bytes()).is_none());
        assert!(parse_authorization(b"Bearer n1").is_none());
        assert!(parse_authorization(&[0xff, 0xfe]).is_none());
    }
}
