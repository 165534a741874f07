//! The two secrets of a delivery, as the router knows them: SHA-256 digests.
//! The path secret picks the route; the secret token is checked against the
//! route's digest in constant time.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// A SHA-256 digest, as `status.routing` carries it in hex.
///
/// Deliberately not `PartialEq`: a token digest can only be compared through
/// [`token_matches`], which takes constant time. This does not compile:
///
/// ```compile_fail
/// use managedbot::router::auth::Digest;
/// let (a, b) = (Digest::of(b"token"), Digest::of(b"guess"));
/// let _ = a == b;
/// ```
#[derive(Clone, Copy)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(Self(digest))
    }

    /// The key a route is found by.
    pub fn into_path_key(self) -> PathKey {
        PathKey(self.0)
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest(<redacted>)")
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// SHA-256 of a path secret: the key of the route table. Equality on it is
/// fine: finding a digest in a map tells an attacker nothing about a secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathKey([u8; 32]);

impl PathKey {
    /// The key of a path secret as it appears in the request path.
    pub fn of_secret(secret: &str) -> Self {
        Digest::of(secret.as_bytes()).into_path_key()
    }
}

impl std::fmt::Debug for PathKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathKey(<redacted>)")
    }
}

/// Whether `presented` (the raw `X-Telegram-Bot-Api-Secret-Token` value) is
/// the token whose digest is `expected`. Hashing first makes the comparison
/// independent of the presented length; `ct_eq` makes it independent of where
/// the digests differ.
pub fn token_matches(presented: &[u8], expected: &Digest) -> bool {
    Digest::of(presented).0.ct_eq(&expected.0).into()
}

/// Telegram's rule for a secret_token, which path secrets follow too: 1 to
/// 256 characters of `A-Za-z0-9_-`. Anything else cannot be a route.
pub fn is_well_formed_secret(secret: &str) -> bool {
    (1..=256).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::webhook_secret::sha256_hex;

    #[test]
    fn a_token_matches_only_its_own_digest() {
        let expected = Digest::from_hex(&sha256_hex("correct-token")).unwrap();
        assert!(token_matches(b"correct-token", &expected));
        assert!(!token_matches(b"correct-tokem", &expected));
        assert!(!token_matches(b"correct-token ", &expected));
        assert!(!token_matches(b"", &expected));
        assert!(!token_matches(&[b'x'; 10_000], &expected));
    }

    #[test]
    fn hex_digests_parse_in_either_case_and_nothing_else() {
        let lower = sha256_hex("abc");
        let upper = lower.to_uppercase();
        for hex in [&lower, &upper] {
            let digest = Digest::from_hex(hex).unwrap();
            assert!(token_matches(b"abc", &digest));
        }
        assert!(Digest::from_hex(&lower[1..]).is_none());
        assert!(Digest::from_hex(&format!("{lower}0")).is_none());
        assert!(Digest::from_hex(&lower.replace('a', "g")).is_none());
        assert!(Digest::from_hex("").is_none());
    }

    #[test]
    fn the_path_key_of_a_secret_is_the_key_of_its_status_digest() {
        let from_status = Digest::from_hex(&sha256_hex("path-secret"))
            .unwrap()
            .into_path_key();
        assert_eq!(PathKey::of_secret("path-secret"), from_status);
        assert_ne!(PathKey::of_secret("path-secreT"), from_status);
    }

    #[test]
    fn only_telegram_shaped_secrets_are_well_formed() {
        assert!(is_well_formed_secret("Ab0_-"));
        assert!(is_well_formed_secret(&"a".repeat(256)));
        for bad in [
            "",
            "a b",
            "a%2Fb",
            "a/b",
            "..",
            "é",
            "a.b",
            &"a".repeat(257),
        ] {
            assert!(!is_well_formed_secret(bad), "{bad:?} passed");
        }
    }

    #[test]
    fn debug_shows_no_digest() {
        let digest = Digest::of(b"t");
        assert_eq!(format!("{digest:?}"), "Digest(<redacted>)");
        assert_eq!(
            format!("{:?}", digest.into_path_key()),
            "PathKey(<redacted>)"
        );
    }
}
