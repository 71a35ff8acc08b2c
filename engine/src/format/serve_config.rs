//! The backup server's configuration file (`/etc/hoard/serve.toml`,
//! format-spec/server.md, "Configuration file"): where it listens, the
//! store it owns, its directory and its certificate's names, so that the
//! systemd unit runs `hoard serve --config FILE` and nothing else.

use serde::Deserialize;

/// What the file says; every key is optional except `store`, and a
/// command-line option given as well wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// `ADDR:PORT`.
    pub listen: Option<String>,
    /// A directory or a bucket URL.
    pub store: String,
    /// The server's directory (tokens, TLS identity).
    pub server_dir: Option<String>,
    /// Names the certificate made on first start is valid for.
    #[serde(default)]
    pub cert_names: Vec<String>,
}

impl ServeConfig {
    /// Parses and checks the file's text; the error says what is wrong
    /// (with the line, for TOML errors).
    pub fn parse(text: &str) -> Result<ServeConfig, String> {
        let c: ServeConfig = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        if c.store.trim().is_empty() {
            return Err("store is empty".into());
        }
        if let Some(listen) = &c.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() && !listen.contains(':') {
                return Err(format!("listen = {listen:?}: not ADDR:PORT"));
            }
        }
        if c.server_dir.as_deref().is_some_and(|d| !d.starts_with('/')) {
            return Err("server_dir must be an absolute path".into());
        }
        if let Some(bad) = c
            .cert_names
            .iter()
            .find(|n| n.is_empty() || n.contains(char::is_whitespace))
        {
            return Err(format!("cert_names: {bad:?} is not a host name or address"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_example_and_refuses_what_is_wrong() {
        let example = include_str!("../../../packaging/serve.toml");
        let c = ServeConfig::parse(example).unwrap();
        assert_eq!(c.listen.as_deref(), Some("0.0.0.0:8007"));
        assert_eq!(c.store, "/srv/hoard/store");
        for (text, want) in [
            ("listen = \"x\"\nstore = \"/s\"", "not ADDR:PORT"),
            ("store = \"\"", "store is empty"),
            ("store = \"/s\"\nserver_dir = \"rel\"", "absolute"),
            ("store = \"/s\"\ncert_names = [\"a b\"]", "cert_names"),
            ("store = \"/s\"\nlisten_on = \"a:1\"", "unknown field"),
            ("listen = \"a:1\"", "missing field `store`"),
        ] {
            let err = ServeConfig::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
