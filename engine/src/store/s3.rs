//! The lower seam on an S3-compatible object store (SeaweedFS, Ceph RGW,
//! MinIO, a cloud bucket): packs as objects under a key prefix.
//!
//! A pack is spooled to a local file while it is written and uploaded whole
//! when sealed, in one create-only PUT (`If-None-Match: *`, which both
//! servers tested here honour atomically): an object exists complete or
//! not at all, so nothing is ever "unfinished" on the server. Packs are at
//! most 128 MiB plus a trailer, well under a single PUT's limit, so no
//! multipart upload (whose conditional completion Ceph RGW 16 ignores) is
//! needed. Reads are ranged GETs. The calls block on a private tokio
//! runtime: the seam is synchronous, the client is async.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, RetryConfig};

use super::backend::{ObjectBackend, ObjectBytes, ObjectInfo, ObjectRead, ObjectWriter};

/// Where an S3 store is: `http(s)://HOST:PORT/BUCKET[/PREFIX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub endpoint: String,
    pub bucket: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
}

impl std::str::FromStr for S3Url {
    type Err = String;
    fn from_str(s: &str) -> Result<S3Url, String> {
        let bad = |why: &str| {
            format!("invalid S3 URL {s:?}: {why} (expected http(s)://HOST[:PORT]/BUCKET[/PREFIX])")
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        let (host, path) = rest.split_once('/').ok_or_else(|| bad("no bucket"))?;
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if host.is_empty() || bucket.is_empty() {
            return Err(bad("empty host or bucket"));
        }
        let prefix = prefix.trim_matches('/');
        Ok(S3Url {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }
}

/// Packs in a bucket. Credentials come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), never
/// from the store's files.
pub struct S3Backend {
    shared: Arc<Shared>,
    /// Where packs are spooled before their upload.
    spool: PathBuf,
}

/// What a backend and its writers and readers share.
struct Shared {
    url: S3Url,
    client: AmazonS3,
    runtime: tokio::runtime::Runtime,
    requests: Requests,
    /// A lower bound of the server's clock minus ours (ns): see
    /// [`S3Backend::set_clock`]. 0 until measured.
    clock_offset_ns: AtomicI64,
}

/// Requests sent, by kind (retries not counted): what a store on S3 costs.
#[derive(Default, Debug)]
pub(crate) struct Requests {
    pub put: AtomicU64,
    pub get: AtomicU64,
    pub head: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
}

impl Requests {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `{"put":N,"get":N,...}`
    pub(crate) fn to_json(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            r#"{{"put":{},"get":{},"head":{},"list":{},"delete":{}}}"#,
            n(&self.put),
            n(&self.get),
            n(&self.head),
            n(&self.list),
            n(&self.delete)
        )
    }
}

impl Drop for Shared {
    /// With `HOARD_S3_STATS` set, says on stderr how many requests this
    /// connection sent (benches/s3.sh counts them per GiB).
    fn drop(&mut self) {
        if std::env::var_os("HOARD_S3_STATS").is_some() {
            eprintln!("hoard: s3 requests {}", self.requests.to_json());
        }
    }
}

impl S3Backend {
    /// Connects lazily: the first request finds out whether the server,
    /// the bucket and the credentials are right.
    /// `credentials` (access key, secret) override the environment's, which
    /// override the shared credentials file's (`aws_credentials`).
    pub fn new(
        url: S3Url,
        spool: PathBuf,
        request_timeout: Duration,
        credentials: Option<(&str, &str)>,
    ) -> io::Result<S3Backend> {
        // rustls is built with two providers here (ring for hoard's own
        // TLS, aws-lc-rs through object_store), so it picks none by
        // itself: name one for the process (a no-op if one is set).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env();
        if let Some((key, secret)) = credentials {
            builder = builder.with_access_key_id(key).with_secret_access_key(secret);
        } else if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            if let Some(c) = super::aws_credentials::lookup()? {
                builder = builder
                    .with_access_key_id(c.key_id)
                    .with_secret_access_key(c.secret);
                if let Some(t) = c.token {
                    builder = builder.with_token(t);
                }
            }
        }
        let client = builder
            .with_endpoint(&url.endpoint)
            .with_bucket_name(&url.bucket)
            .with_virtual_hosted_style_request(false)
            .with_region(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()))
            // Client options replace the builder's, allow_http included.
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(request_timeout)
                    .with_allow_http(url.endpoint.starts_with("http:")),
            )
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: request_timeout * 4,
                ..RetryConfig::default()
            })
            .build()
            .map_err(|e| io::Error::other(format!("{}: {e}", url.endpoint)))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        fs::create_dir_all(&spool)?;
        remove_stale_spools(&spool);
        Ok(S3Backend {
            shared: Arc::new(Shared {
                url,
                client,
                runtime,
                requests: Requests::default(),
                clock_offset_ns: AtomicI64::new(0),
            }),
            spool,
        })
    }
}

impl Shared {
    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{name}", self.url.prefix))
    }

    /// The URL of `name`, for messages.
    fn url_of(&self, name: &str) -> String {
        format!(
            "{}/{}/{}{name}",
            self.url.endpoint, self.url.bucket, self.url.prefix
        )
    }

    fn err(&self, name: &str) -> impl Fn(object_store::Error) -> io::Error + '_ {
        let url = self.url_of(name);
        move |e| {
            let kind = match &e {
                object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
                object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                    io::ErrorKind::AlreadyExists
                }
                _ => io::ErrorKind::Other,
            };
            io::Error::new(kind, describe(&e, &url))
        }
    }
}

impl ObjectBackend for S3Backend {
    fn location(&self, name: &str) -> PathBuf {
        PathBuf::from(self.shared.url_of(name))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let path = self.spool.join(format!("spool-{}", uuid::Uuid::new_v4()));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Box::new(S3Writer {
            shared: self.shared.clone(),
            name: name.to_string(),
            spooled: Spooled { path, file },
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn ObjectRead>> {
        let s = &self.shared;
        let path = s.path(name);
        Requests::count(&s.requests.head);
        let meta = s.runtime.block_on(s.client.head(&path)).map_err(s.err(name))?;
        Ok(Box::new(S3Read {
            shared: s.clone(),
            path,
            size: meta.size,
            url: s.url_of(name),
        }))
    }

    fn get(&self, name: &str) -> io::Result<ObjectBytes> {
        self.shared.get(name)
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        self.shared.list(prefix)
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        self.shared.delete(name)
    }

    /// A copy under the new name (create-only), then the delete: not
    /// atomic, but a crash between leaves both, never neither.
    fn set_aside(&self, name: &str, suffix: &str) -> io::Result<String> {
        let bytes = self.shared.get(name)?;
        for n in 0u32.. {
            let aside = if n == 0 {
                format!("{name}{suffix}")
            } else {
                format!("{name}{suffix}-{n}")
            };
            match self.shared.put_new(&aside, bytes.to_bytes()) {
                Ok(()) => {
                    self.shared.delete(name)?;
                    return Ok(aside);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("some suffix is free")
    }

    /// Uploads are single create-only PUTs: a killed writer leaves nothing
    /// on the server, only its local spool file.
    fn remove_unfinished(&self, _prefix: &str, _cutoff_ns: u64) -> io::Result<Vec<(String, u64)>> {
        Ok(Vec::new())
    }
}

impl S3Backend {
    /// Writes the small object `name` whole: create-only, or replacing
    /// what is there (a PUT replaces atomically: readers see the old
    /// object or the new one).
    pub fn put(&self, name: &str, bytes: Vec<u8>, create_only: bool) -> io::Result<()> {
        let mode = if create_only {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        self.shared.put(name, bytes.into(), mode)
    }

    /// Sets the server's clock against ours from an object just written:
    /// `listed_ns` is its time as [`list`](ObjectBackend::list) gave it,
    /// `written_by_ns` our clock when its PUT returned. From then on listed
    /// times are on our clock (a writer's GC compares them with its
    /// cutoffs; a server clock behind ours would otherwise make new objects
    /// look old). Last-Modified has whole seconds and was stamped before
    /// the PUT returned, so the server's clock is at least `Last-Modified -
    /// written_by` ahead: the offset makes objects look younger, never
    /// older, by up to a second and the request's time.
    pub fn set_clock(&self, listed_ns: u64, written_by_ns: u64) {
        let offset = &self.shared.clock_offset_ns;
        let server = (listed_ns as i64).saturating_add(offset.load(Ordering::Relaxed));
        offset.store(server.saturating_sub(written_by_ns as i64), Ordering::Relaxed);
    }

    /// The `len` bytes of `name` that end where the object does (all of it
    /// if it is shorter), in one ranged GET.
    pub fn get_tail(&self, name: &str, size: u64, len: u64) -> io::Result<bytes::Bytes> {
        let s = &self.shared;
        let start = size.saturating_sub(len);
        Requests::count(&s.requests.get);
        s.runtime
            .block_on(s.client.get_range(&s.path(name), start..size))
            .map_err(s.err(name))
    }
}

/// An S3 error as one line: the URL once (object_store's messages often
/// name it already), and the innermost cause the client saw ("connection
/// refused", "operation timed out"), which its own message leaves out
/// ("error sending request").
fn describe(e: &object_store::Error, url: &str) -> String {
    let text = crate::error::with_innermost_cause(e);
    if text.contains(url) {
        text
    } else {
        format!("{url}: {text}")
    }
}

/// A listed time (the server's clock) on ours. The offset is the smallest
/// the measurement allows, so an object never looks older than it is:
/// GC's cutoffs, on our clock, compare with these.
fn on_our_clock(server_ns: i64, offset_ns: i64) -> u64 {
    server_ns.saturating_sub(offset_ns).max(0) as u64
}

impl Shared {
    fn get(&self, name: &str) -> io::Result<ObjectBytes> {
        let path = self.path(name);
        Requests::count(&self.requests.get);
        let bytes = self
            .runtime
            .block_on(async { self.client.get(&path).await?.bytes().await })
            .map_err(self.err(name))?;
        Ok(ObjectBytes::Bytes(bytes))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        // object_store lists by directory; the seam lists by name prefix.
        let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let under = (!dir.is_empty() || !self.url.prefix.is_empty()).then(|| self.path(dir));
        Requests::count(&self.requests.list);
        let found: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(self.client.list(under.as_ref()).try_collect())
            .map_err(self.err(prefix))?;
        let mut out: Vec<ObjectInfo> = found
            .into_iter()
            .filter_map(|m| {
                let name = m
                    .location
                    .as_ref()
                    .strip_prefix(self.url.prefix.as_str())?
                    .to_string();
                name.starts_with(prefix).then(|| ObjectInfo {
                    name,
                    size: m.size,
                    modified_ns: on_our_clock(
                        m.last_modified.timestamp_nanos_opt().unwrap_or(0),
                        self.clock_offset_ns.load(Ordering::Relaxed),
                    ),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        Requests::count(&self.requests.delete);
        self.runtime
            .block_on(self.client.delete(&self.path(name)))
            .map_err(self.err(name))
    }

    /// One create-only PUT: `AlreadyExists` if `name` exists.
    fn put_new(&self, name: &str, bytes: bytes::Bytes) -> io::Result<()> {
        self.put(name, bytes, PutMode::Create)
    }

    fn put(&self, name: &str, bytes: bytes::Bytes, mode: PutMode) -> io::Result<()> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        Requests::count(&self.requests.put);
        let result = self
            .runtime
            .block_on(self.client.put_opts(&self.path(name), bytes.clone().into(), opts))
            .map(|_| ())
            .map_err(self.err(name));
        match result {
            // A create-only PUT that was stored but answered with an error
            // (a 503, a timeout) is retried, and the retry finds the object
            // there: if it holds exactly these bytes, the write happened.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match self.get(name) {
                Ok(stored) if *stored == bytes[..] => Ok(()),
                _ => Err(e),
            },
            other => other,
        }
    }
}

/// Removes spool files a killed process left (older than an hour). Even
/// a live writer's would survive this: it holds its file open and maps it
/// through that descriptor, so the unlinked name is not needed.
fn remove_stale_spools(spool: &std::path::Path) {
    let Ok(entries) = fs::read_dir(spool) else { return };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(3600)));
        if old && e.file_name().to_string_lossy().starts_with("spool-") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// A pack's local spool file, removed however its write ends.
struct Spooled {
    path: PathBuf,
    file: File,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

struct S3Writer {
    shared: Arc<Shared>,
    name: String,
    spooled: Spooled,
}

impl ObjectWriter for S3Writer {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.spooled.file.write_all(bytes)
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        // SAFETY: the spool file is private to this writer and no longer
        // written while mapped.
        let map = unsafe { memmap2::Mmap::map(&self.spooled.file)? };
        self.shared.put_new(&self.name, bytes::Bytes::from_owner(map))
    }

    fn abort(self: Box<Self>) {}
}

struct S3Read {
    shared: Arc<Shared>,
    path: ObjectPath,
    size: u64,
    url: String,
}

impl ObjectRead for S3Read {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: read of {offset}..{end} past its end ({})",
                    self.url, self.size
                ),
            ));
        }
        if buf.is_empty() {
            return Ok(());
        }
        Requests::count(&self.shared.requests.get);
        let got = self
            .shared
            .runtime
            .block_on(self.shared.client.get_range(&self.path, offset..end))
            .map_err(|e| io::Error::other(format!("{}: {e}", self.url)))?;
        if got.len() != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: short ranged read", self.url),
            ));
        }
        buf.copy_from_slice(&got);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_times_never_look_older_than_they_are() {
        let s = 1_000_000_000i64;
        // PUT returned at our 100.9 s; the server stamped 97 s (its clock
        // is 3-4 s behind): offset -3.9 s; an object it stamps 97 s was
        // written by our 100.9 s at the latest, and reads as that.
        let offset = 97 * s - (100 * s + 900_000_000);
        assert_eq!(on_our_clock(97 * s, offset), (100 * s + 900_000_000) as u64);
        assert_eq!(on_our_clock(5 * s, 0), 5 * s as u64);
        assert_eq!(on_our_clock(0, s), 0);
    }

    #[test]
    fn urls_parse() {
        let u: S3Url = "http://127.0.0.1:18333/b/some/prefix/".parse().unwrap();
        assert_eq!(u.endpoint, "http://127.0.0.1:18333");
        assert_eq!(u.bucket, "b");
        assert_eq!(u.prefix, "some/prefix/");
        assert_eq!("https://h/b".parse::<S3Url>().unwrap().prefix, "");
        for bad in ["ftp://h/b", "http://h", "http:///b", "h/b"] {
            assert!(bad.parse::<S3Url>().is_err(), "{bad}");
        }
    }
}
