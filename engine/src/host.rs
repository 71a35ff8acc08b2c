//! The machine hoard runs on, as snapshots, leases and mails name it.

/// The host name, or `localhost` when the kernel has none.
pub fn name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
