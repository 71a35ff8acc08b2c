//! The API tokens of a `hoard serve` (`SERVER_DIR/tokens.json`,
//! format-spec/server.md): who may do what, in which namespace. A token's
//! secret is shown once when it is made and never stored; the file holds
//! its hash, so reading the file does not grant access.

use serde::{Deserialize, Serialize};

pub(crate) const TOKEN_LIST_FORMAT: &str = "hoard-tokens";
pub(crate) const TOKEN_LIST_VERSION: u32 = 1;
/// Namespaces nest at most this deep, as in Proxmox Backup Server.
pub(crate) const MAX_NAMESPACE_DEPTH: usize = 8;

/// What a token may do (format-spec/server.md, "Roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Adds snapshots to its namespace; deletes nothing.
    Backup,
    /// Lists and reads its namespace.
    Reader,
    /// Maintenance and tokens, in every namespace.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Backup => "backup",
            Role::Reader => "reader",
            Role::Admin => "admin",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: String,
    pub role: Role,
    /// `a/b/c`, or "" for the root namespace (and all below it).
    #[serde(default)]
    pub namespace: String,
    /// 64 hex digits: `BLAKE3 derive_key("hoard 2026-12 api token", secret)`.
    pub hash: String,
    /// When it was made, RFC 3339 UTC.
    pub created: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenList {
    /// Always "hoard-tokens".
    pub format: String,
    pub version: u32,
    #[serde(default)]
    pub tokens: Vec<Token>,
}

impl Default for TokenList {
    fn default() -> Self {
        TokenList {
            format: TOKEN_LIST_FORMAT.into(),
            version: TOKEN_LIST_VERSION,
            tokens: Vec::new(),
        }
    }
}

/// A token name: 1 to 64 of `[A-Za-z0-9._-]`, not starting with `-` or `.`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A namespace: "" (the root), or up to eight `/`-separated levels of 1 to
/// 32 `[A-Za-z0-9_-]`, not starting with `-`.
pub(crate) fn valid_namespace(ns: &str) -> bool {
    ns.is_empty()
        || (ns.split('/').count() <= MAX_NAMESPACE_DEPTH
            && ns.split('/').all(|level| {
                (1..=32).contains(&level.len())
                    && !level.starts_with('-')
                    && level
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
            }))
}

/// The stored hash of a token secret (32 bytes).
pub(crate) fn hash_secret(secret: &[u8; 32]) -> String {
    crate::chunking::digest::to_hex(&blake3::derive_key("hoard 2026-12 api token", secret))
}

impl TokenList {
    /// Parses and checks a token list; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<TokenList, String> {
        let list: TokenList = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if list.format != TOKEN_LIST_FORMAT {
            return Err(format!("format is {:?}, not {TOKEN_LIST_FORMAT:?}", list.format));
        }
        if list.version != TOKEN_LIST_VERSION {
            return Err(format!(
                "version {}; this hoard reads version {TOKEN_LIST_VERSION}",
                list.version
            ));
        }
        for (i, t) in list.tokens.iter().enumerate() {
            if !valid_name(&t.name) {
                return Err(format!("token {i}: invalid name {:?}", t.name));
            }
            if list.tokens[..i].iter().any(|u| u.name == t.name) {
                return Err(format!("token {:?} is listed twice", t.name));
            }
            if !valid_namespace(&t.namespace) {
                return Err(format!("token {:?}: invalid namespace {:?}", t.name, t.namespace));
            }
            if crate::chunking::digest::from_hex::<32>(&t.hash).is_none() {
                return Err(format!(
                    "token {:?}: hash is not 64 lower-case hex digits",
                    t.name
                ));
            }
            if !crate::format::snapshot::valid_time(&t.created) {
                return Err(format!(
                    "token {:?}: invalid created time {:?}",
                    t.name, t.created
                ));
            }
        }
        Ok(list)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a token list serializes");
        out.push(b'\n');
        out
    }

    /// The token `name` whose secret is `secret`, the hashes compared in
    /// constant time.
    pub fn authenticate(&self, name: &str, secret: &[u8; 32]) -> Option<&Token> {
        let token = self.tokens.iter().find(|t| t.name == name)?;
        let want = blake3::Hash::from(crate::chunking::digest::from_hex::<32>(&token.hash)?);
        // blake3::Hash's equality is constant-time.
        (want == blake3::Hash::from(blake3::derive_key("hoard 2026-12 api token", secret))).then_some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> TokenList {
        TokenList {
            tokens: vec![Token {
                name: "node1".into(),
                role: Role::Backup,
                namespace: "cluster/node1".into(),
                hash: hash_secret(&[7; 32]),
                created: "2026-12-07T22:00:00Z".into(),
            }],
            ..TokenList::default()
        }
    }

    #[test]
    fn round_trips_and_authenticates_by_secret() {
        let l = list();
        let back = TokenList::parse(&l.encode()).unwrap();
        assert_eq!(back, l);
        assert_eq!(
            back.authenticate("node1", &[7; 32]).map(|t| t.role),
            Some(Role::Backup)
        );
        assert!(back.authenticate("node1", &[8; 32]).is_none());
        assert!(back.authenticate("node2", &[7; 32]).is_none());
        // The secret itself is nowhere in the file.
        let text = String::from_utf8(l.encode()).unwrap();
        assert!(!text.contains(&crate::chunking::digest::to_hex(&[7u8; 32])));
    }

    #[test]
    fn refuses_what_is_wrong_by_name() {
        let bad = |edit: fn(&mut Token), want: &str| {
            let mut l = list();
            edit(&mut l.tokens[0]);
            let err = TokenList::parse(&l.encode()).unwrap_err();
            assert!(err.contains(want), "{err}");
        };
        bad(|t| t.name = "-rf".into(), "invalid name");
        bad(|t| t.namespace = "a//b".into(), "invalid namespace");
        bad(|t| t.namespace = "a/b/c/d/e/f/g/h/i".into(), "invalid namespace");
        bad(|t| t.hash = t.hash.to_uppercase(), "hash");
        bad(|t| t.created = "yesterday".into(), "created");
        let mut twice = list();
        twice.tokens.push(twice.tokens[0].clone());
        assert!(TokenList::parse(&twice.encode()).unwrap_err().contains("twice"));
        assert!(TokenList::parse(br#"{"format":"x","version":1}"#).is_err());
        assert!(valid_namespace("") && valid_namespace("a/b-c/D_9"));
    }
}
