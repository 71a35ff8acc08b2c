//! `STORE` as a user names it (`--store`, `HOARD_STORE`, a job's `store`):
//! a directory, or the URL of a bucket (store.md, "A store in an
//! S3-compatible bucket"). A plain function of the text, below both the
//! store (which opens what it names) and the job file (which checks it).

/// Whether `store` names a store in a bucket rather than a directory.
pub fn is_url(store: &str) -> bool {
    store.starts_with("http://") || store.starts_with("https://")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bucket_is_named_by_its_url() {
        assert!(super::is_url("https://s3.example.org/bucket/prefix"));
        assert!(super::is_url("http://127.0.0.1:8333/b"));
        assert!(!super::is_url("/backup/store"));
        assert!(!super::is_url("relative/http://x"));
    }
}
