//! TLS for `hoard export` over TCP: NBD's `NBD_OPT_STARTTLS` with x509
//! certificates, the way qemu's `tls-creds-x509` and libnbd's
//! `tls-certificates` do it. The server demands a client certificate signed
//! by the same CA: the certificate is the access control that plain NBD
//! lacks. (NBD also knows TLS-PSK, which rustls does not implement.)
//!
//! After the TLS handshake the connection is split into a reading and a
//! writing half that share the TLS state behind a mutex, so requests and
//! replies go both ways at once, as on a plain socket.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use crate::error::{Classify, Context, ErrorKind};
use crate::format::nbd_wire::Socket;

/// The files of a credentials directory, named as qemu names them.
pub(crate) const CA_CERT: &str = "ca-cert.pem";
pub(crate) const SERVER_CERT: &str = "server-cert.pem";
pub(crate) const SERVER_KEY: &str = "server-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    Creds { path: PathBuf, detail: String },
}

impl Classify for TlsError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }

    fn context(&self) -> Context {
        let TlsError::Creds { path, .. } = self;
        Context::path(path)
    }
}

/// The certificates of a PEM file, at least one; the error says what is
/// wrong with it.
pub(crate) fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

/// Server credentials: `DIR/ca-cert.pem` (the CA that signs client
/// certificates), `DIR/server-cert.pem` (chain) and `DIR/server-key.pem`.
pub fn server_config(dir: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let err = |file: &str, detail: String| TlsError::Creds {
        path: dir.join(file),
        detail,
    };
    let certs = |file: &str| pem_certs(&dir.join(file)).map_err(|detail| err(file, detail));
    let mut roots = RootCertStore::empty();
    for ca in certs(CA_CERT)? {
        roots.add(ca).map_err(|e| err(CA_CERT, e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err(CA_CERT, e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_file(dir.join(SERVER_KEY)).map_err(|e| err(SERVER_KEY, e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(SERVER_CERT, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(SERVER_CERT)?, key)
        .map_err(|e| err(SERVER_KEY, e.to_string()))?;
    Ok(Arc::new(config))
}

/// Runs the TLS handshake on `sock` (bounded by `timeout`) and returns the
/// two halves of the protected connection.
pub(crate) fn accept(
    config: Arc<ServerConfig>,
    sock: Socket,
    timeout: Duration,
) -> io::Result<(TlsReader, TlsWriter)> {
    let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut raw = sock.try_clone()?;
    raw.set_read_timeout(Some(timeout))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut raw)?;
    }
    raw.set_read_timeout(None)?;
    let shared = Arc::new(Mutex::new(conn));
    Ok((
        TlsReader {
            shared: Arc::clone(&shared),
            sock: sock.try_clone()?,
            out: sock.try_clone()?,
            pending: Vec::new(),
            at: 0,
        },
        TlsWriter { shared, sock },
    ))
}

/// Reads plaintext: decrypts what the socket delivers.
pub(crate) struct TlsReader {
    shared: Arc<Mutex<ServerConnection>>,
    sock: Socket,
    /// For what the TLS state must send while reading (alerts, key updates).
    out: Socket,
    /// Ciphertext read from the socket and not yet taken by rustls.
    pending: Vec<u8>,
    at: usize,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            {
                let mut c = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.at < self.pending.len() {
                    let mut rest = &self.pending[self.at..];
                    let before = rest.len();
                    c.read_tls(&mut rest)?;
                    self.at += before - rest.len();
                    let state = c
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
                    send_queued(&mut c, &mut self.out)?;
                    state?;
                    continue;
                }
            }
            // Nothing left to decrypt: wait for the socket, without the lock,
            // so that replies go out meanwhile.
            self.pending.resize(32 << 10, 0);
            self.at = 0;
            let n = self.sock.read(&mut self.pending)?;
            self.pending.truncate(n);
            if n == 0 {
                return Ok(0);
            }
        }
    }
}

/// Writes plaintext: encrypts it and sends it at once.
pub(crate) struct TlsWriter {
    shared: Arc<Mutex<ServerConnection>>,
    sock: Socket,
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut c = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.writer().write(buf)?;
        send_queued(&mut c, &mut self.sock)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut c = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        c.writer().flush()?;
        send_queued(&mut c, &mut self.sock)
    }
}

/// Sends whatever TLS records rustls has queued.
fn send_queued(c: &mut ServerConnection, sock: &mut Socket) -> io::Result<()> {
    while c.wants_write() {
        c.write_tls(sock)?;
    }
    Ok(())
}
