//! Recovery copies of a store's secret, so that a lost passphrase does not
//! lose the backups: sealed to an X25519 recipient in the age format (the
//! `age` tool opens it too), or printed on paper. Format:
//! format-spec/key-file.md, "Recovery copies".

use std::io::{Read, Write};

use age::armor::{ArmoredReader, ArmoredWriter, Format};

use super::master_key::MasterKey;
use zeroize::Zeroizing;

use crate::chunking::digest::to_hex;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("not an age X25519 recipient (age1...): {0}")]
    BadRecipient(String),
    #[error("no age X25519 identity (AGE-SECRET-KEY-1...) in the identity file")]
    NoIdentity,
    #[error("the recovery file does not open with this identity: {0}")]
    Decrypt(String),
    #[error("malformed recovery copy: {0}")]
    Malformed(String),
}

const PAYLOAD_MAGIC: &str = "hoard-recovery 1";
const PAPER_LINES: usize = 4;

/// The secret sealed to `recipient` (an `age1...` public key), ASCII-armored.
pub fn seal(key: &MasterKey, recipient: &str) -> Result<String, RecoveryError> {
    let r: age::x25519::Recipient = recipient
        .trim()
        .parse()
        .map_err(|e: &str| RecoveryError::BadRecipient(e.to_string()))?;
    let payload = Zeroizing::new(format!(
        "{PAYLOAD_MAGIC}\nfingerprint {}\nsecret {}\n",
        key.fingerprint_hex(),
        *Zeroizing::new(to_hex(key.secret()))
    ));
    let encryptor = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
        .map_err(|e| RecoveryError::BadRecipient(e.to_string()))?;
    let mut out = Vec::new();
    let armor = ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor).map_err(malformed)?;
    let mut w = encryptor.wrap_output(armor).map_err(malformed)?;
    w.write_all(payload.as_bytes()).map_err(malformed)?;
    w.finish().and_then(|armor| armor.finish()).map_err(malformed)?;
    String::from_utf8(out).map_err(malformed)
}

/// The secret in a recovery file `sealed`, opened with an age identity
/// file's text (lines of `AGE-SECRET-KEY-1...`, `#` comments).
pub fn open(sealed: &[u8], identity_file: &str) -> Result<MasterKey, RecoveryError> {
    let identities: Vec<age::x25519::Identity> = identity_file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.parse().ok())
        .collect();
    if identities.is_empty() {
        return Err(RecoveryError::NoIdentity);
    }
    let decryptor =
        age::Decryptor::new(ArmoredReader::new(sealed)).map_err(|e| RecoveryError::Decrypt(e.to_string()))?;
    let reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| RecoveryError::Decrypt(e.to_string()))?;
    let mut text = Zeroizing::new(String::new());
    reader
        .take(4096)
        .read_to_string(&mut text)
        .map_err(|e| RecoveryError::Decrypt(e.to_string()))?;
    let mut lines = text.lines();
    if lines.next() != Some(PAYLOAD_MAGIC) {
        return Err(RecoveryError::Malformed("not a hoard recovery payload".into()));
    }
    let field = |line: Option<&str>, name: &str| {
        line.and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(' '))
            .map(str::to_string)
            .ok_or_else(|| RecoveryError::Malformed(format!("no {name} line")))
    };
    let fingerprint = field(lines.next(), "fingerprint")?;
    let secret = field(lines.next(), "secret")?;
    let secret = crate::chunking::digest::from_hex::<32>(&secret)
        .ok_or_else(|| RecoveryError::Malformed("secret is not 64 hex digits".into()))?;
    checked(MasterKey::from_secret(secret), &fingerprint)
}

/// The secret as four lines of hex to print and keep, each with a check
/// byte so that a mistyped line is found, and named, when typed back in.
pub fn paper(key: &MasterKey) -> Zeroizing<String> {
    let mut out = Zeroizing::new(format!(
        "hoard store secret, fingerprint {}\n",
        key.fingerprint_hex()
    ));
    for (i, part) in key.secret().chunks(32 / PAPER_LINES).enumerate() {
        let hex = Zeroizing::new(to_hex(part));
        let groups: Vec<&str> = (0..hex.len()).step_by(4).map(|j| &hex[j..j + 4]).collect();
        out.push_str(&format!(
            "{}: {}  {}\n",
            i + 1,
            groups.join(" "),
            to_hex(&[check_byte(i, part)])
        ));
    }
    out
}

/// Reads [`paper`]'s text back (spaces and other lines ignored).
pub fn from_paper(text: &str) -> Result<MasterKey, RecoveryError> {
    let mut secret = [0u8; 32];
    let mut seen = [false; PAPER_LINES];
    let mut fingerprint = None;
    for line in text.lines() {
        if let Some(f) = line.trim().strip_prefix("hoard store secret, fingerprint ") {
            fingerprint = Some(f.trim().to_string());
            continue;
        }
        let Some((n, rest)) = line.trim().split_once(':') else {
            continue;
        };
        let Ok(n) = n.trim().parse::<usize>() else {
            continue;
        };
        if !(1..=PAPER_LINES).contains(&n) {
            return Err(RecoveryError::Malformed(format!(
                "line number {n} is not 1..{PAPER_LINES}"
            )));
        }
        // Typed by hand: upper case is as good as lower here.
        let hex: Zeroizing<String> = Zeroizing::new(
            rest.chars()
                .filter(|c| !c.is_whitespace())
                .map(|c| c.to_ascii_lowercase())
                .collect(),
        );
        let bytes = crate::chunking::digest::from_hex::<9>(&hex)
            .ok_or_else(|| RecoveryError::Malformed(format!("line {n} is not 18 hex digits")))?;
        let (part, check) = bytes.split_at(8);
        if check_byte(n - 1, part) != check[0] {
            return Err(RecoveryError::Malformed(format!(
                "line {n} does not match its check digits: mistyped?"
            )));
        }
        secret[(n - 1) * 8..n * 8].copy_from_slice(part);
        seen[n - 1] = true;
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(RecoveryError::Malformed(format!(
            "line {} is missing",
            missing + 1
        )));
    }
    let key = MasterKey::from_secret(secret);
    match fingerprint {
        Some(f) => checked(key, &f),
        None => Ok(key),
    }
}

fn check_byte(line: usize, part: &[u8]) -> u8 {
    let mut h = blake3::Hasher::new_derive_key("hoard 2026-12 paper key line");
    h.update(&[line as u8]);
    h.update(part);
    h.finalize().as_bytes()[0]
}

fn checked(key: MasterKey, fingerprint: &str) -> Result<MasterKey, RecoveryError> {
    if key.fingerprint_hex() != fingerprint {
        return Err(RecoveryError::Malformed(format!(
            "the secret's fingerprint is {}, the copy names {fingerprint}",
            key.fingerprint_hex()
        )));
    }
    Ok(key)
}

fn malformed(e: impl std::fmt::Display) -> RecoveryError {
    RecoveryError::Malformed(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_copy_opens_with_its_identity_only() {
        let key = MasterKey::generate().unwrap();
        let id = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        let sealed = seal(&key, &recipient).unwrap();
        assert!(sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        assert!(!sealed.contains(&to_hex(key.secret())));
        use age::secrecy::ExposeSecret;
        let id_text = format!("# test\n{}\n", id.to_string().expose_secret());
        assert_eq!(open(sealed.as_bytes(), &id_text).unwrap().secret(), key.secret());
        let other = age::x25519::Identity::generate();
        let other_text = other.to_string().expose_secret().to_string();
        assert!(matches!(
            open(sealed.as_bytes(), &other_text),
            Err(RecoveryError::Decrypt(_))
        ));
        assert!(matches!(
            open(sealed.as_bytes(), "# nothing"),
            Err(RecoveryError::NoIdentity)
        ));
        assert!(matches!(
            seal(&key, "age1nope"),
            Err(RecoveryError::BadRecipient(_))
        ));
    }

    #[test]
    fn paper_round_trips_and_names_a_mistyped_line() {
        let key = MasterKey::generate().unwrap();
        let text = paper(&key);
        assert_eq!(text.lines().count(), 5);
        assert_eq!(from_paper(&text).unwrap().secret(), key.secret());
        // Typed back without the spaces, lines in any order.
        let mut lines: Vec<String> = text.lines().skip(1).map(|l| l.replace(' ', "")).collect();
        lines.reverse();
        assert_eq!(from_paper(&lines.join("\n")).unwrap().secret(), key.secret());
        let mut bad: Vec<String> = text.lines().map(String::from).collect();
        let c = if bad[2].as_bytes()[3] == b'0' { "1" } else { "0" };
        bad[2].replace_range(3..4, c);
        let e = from_paper(&bad.join("\n")).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = from_paper(&text.lines().take(3).collect::<Vec<_>>().join("\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3 is missing"), "{e}");
    }
}
