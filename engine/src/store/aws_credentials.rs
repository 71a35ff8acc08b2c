//! The AWS shared credentials file (`~/.aws/credentials`, or
//! `AWS_SHARED_CREDENTIALS_FILE`), as the AWS CLI, restic and rclone read
//! it: INI sections named by profile (`AWS_PROFILE`, else `default`) with
//! `aws_access_key_id`, `aws_secret_access_key` and optionally
//! `aws_session_token`. Used only when the environment has no access key.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

/// The credentials of the profile in effect, from the file in effect:
/// None if there is no file, or no such profile when none was asked for.
pub(crate) fn lookup() -> io::Result<Option<Credentials>> {
    let path = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(".aws/credentials"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    let asked = std::env::var("AWS_PROFILE").ok();
    let profile = asked.as_deref().unwrap_or("default");
    let bad = |message: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {message}", path.display()),
        )
    };
    match parse(&text, profile).map_err(bad)? {
        Some(c) => Ok(Some(c)),
        None if asked.is_some() => Err(bad(format!("no profile [{profile}]"))),
        None => Ok(None),
    }
}

/// Profile `profile` of a credentials file's text.
pub(crate) fn parse(text: &str, profile: &str) -> Result<Option<Credentials>, String> {
    let mut section: Option<&str> = None;
    let (mut found, mut key_id, mut secret, mut token) = (false, None, None, None);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: a section header without ']'", n + 1))?;
            section = Some(name.trim());
            found |= section == Some(profile);
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: neither a [profile] nor a key = value", n + 1))?;
        if section != Some(profile) {
            continue;
        }
        let v = Some(v.trim().to_string());
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => key_id = v,
            "aws_secret_access_key" => secret = v,
            "aws_session_token" => token = v,
            _ => {}
        }
    }
    if !found {
        return Ok(None);
    }
    let need = |v: Option<String>, name: &str| v.ok_or_else(|| format!("profile [{profile}] has no {name}"));
    Ok(Some(Credentials {
        key_id: need(key_id, "aws_access_key_id")?,
        secret: need(secret, "aws_secret_access_key")?,
        token,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n[default]\naws_access_key_id = AK1\naws_secret_access_key=SK1\n\n\
                        [backup]\n ; another\nAWS_ACCESS_KEY_ID = AK2\naws_secret_access_key = S K2\naws_session_token = T\nregion = x\n";

    #[test]
    fn profiles_are_read_by_name() {
        let d = parse(FILE, "default").unwrap().unwrap();
        assert_eq!(
            (d.key_id.as_str(), d.secret.as_str(), d.token),
            ("AK1", "SK1", None)
        );
        let b = parse(FILE, "backup").unwrap().unwrap();
        assert_eq!(
            (b.key_id.as_str(), b.secret.as_str(), b.token.as_deref()),
            ("AK2", "S K2", Some("T"))
        );
        assert_eq!(parse(FILE, "other").unwrap(), None);
    }

    #[test]
    fn bad_files_say_where() {
        assert!(parse("[a\nx=1", "a").unwrap_err().contains("line 1"));
        assert!(parse("[a]\njunk", "a").unwrap_err().contains("line 2"));
        assert!(parse("[a]\naws_access_key_id=k", "a")
            .unwrap_err()
            .contains("no aws_secret_access_key"));
    }
}
