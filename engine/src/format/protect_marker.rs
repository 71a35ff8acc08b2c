//! A snapshot's `protected` marker (format-spec/store.md, "protected"):
//! empty in a plain store; in a protected store, the lowercase hex of a MAC
//! that binds the marker to its snapshot, so that with the key a marker
//! planted by whoever holds the store is told from one the owner set.

use crate::chunking::digest::{from_hex, to_hex};

/// The marker's bytes for a MAC (None: a plain store's empty marker).
pub(crate) fn encode(mac: Option<&[u8; 32]>) -> Vec<u8> {
    mac.map_or_else(Vec::new, |m| format!("{}\n", to_hex(m)).into_bytes())
}

/// The MAC a marker carries: 64 lowercase hex digits and a newline, the
/// one spelling [`encode`] writes. None for anything else (an empty
/// marker, or bytes that are not a MAC).
pub(crate) fn decode(bytes: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(bytes.strip_suffix(b"\n")?).ok()?;
    from_hex::<32>(text)
}

/// What the MAC covers: a fixed label and the snapshot's name, so that a
/// marker is bound to its snapshot and is never a manifest's or a verify
/// state's MAC.
pub(crate) fn mac_input(snapshot: &str) -> Vec<u8> {
    format!("hoard protected\n{snapshot}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_what_it_writes() {
        let mac = [0xab; 32];
        assert_eq!(decode(&encode(Some(&mac))), Some(mac));
        assert_eq!(encode(None), b"");
        for bad in [&b""[..], b"\n", &[b'a'; 64], b"AB", &encode(Some(&mac))[1..]] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        let upper = String::from_utf8(encode(Some(&mac))).unwrap().to_uppercase();
        assert_eq!(decode(upper.as_bytes()), None);
    }
}
