//! The generated Secret `{bot}-webhook`: the webhook secret pair, the source
//! of truth of a bot's registration. A lost status is rebuilt from it; it is
//! only ever regenerated when it is gone or a rotation is asked for.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::resource::{ManagedBot, PreviousRouteHashes, RouteHashes, Routing};

/// Data keys of the generated Secret.
pub mod keys {
    /// The path secret: the last segment of the webhook URL.
    pub const WEBHOOK_SECRET: &str = "webhook-secret";
    /// Sent to Telegram as `secret_token`, checked by the router.
    pub const SECRET_TOKEN: &str = "secret-token";
    /// The webhook URL of the current pair.
    pub const WEBHOOK_URL: &str = "webhook-url";
    /// The previous path secret, during a grace period.
    pub const PREVIOUS_WEBHOOK_SECRET: &str = "previous-webhook-secret";
    /// The previous secret token, during a grace period.
    pub const PREVIOUS_SECRET_TOKEN: &str = "previous-secret-token";
    /// When the previous pair stops being routed (RFC 3339).
    pub const PREVIOUS_EXPIRES_AT: &str = "previous-expires-at";
}

/// Annotations on the generated Secret. They are written in the same write
/// as the pair they describe, which is what makes rotation crash-safe.
pub mod annotations {
    /// The value of `managedbot.dev/rotate` the current pair answers.
    pub const ROTATION_OBSERVED: &str = "managedbot.dev/rotation-observed";
    /// When the current pair was generated (RFC 3339).
    pub const GENERATED_AT: &str = "managedbot.dev/generated-at";
    /// SHA-256 of the bot token the current pair was registered with, to
    /// notice a changed token without keeping it.
    pub const TOKEN_SHA256: &str = "managedbot.dev/token-sha256";
}

/// The Secret's name for a bot.
pub fn secret_name(bot: &str) -> String {
    format!("{bot}-webhook")
}

/// A path secret and a secret token. Debug never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Pair {
    /// The path secret.
    pub path_secret: String,
    /// The secret token.
    pub secret_token: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pair(<redacted>)")
    }
}

impl Pair {
    /// Two fresh secrets of 32 bytes from the OS CSPRNG, base64url without
    /// padding: 43 characters of `A-Za-z0-9_-`, valid in a URL path and as
    /// Telegram's `secret_token`.
    pub fn generate() -> Result<Self, rand::rngs::SysError> {
        Ok(Self {
            path_secret: random_secret()?,
            secret_token: random_secret()?,
        })
    }

    /// The hashes the router routes by.
    pub fn hashes(&self) -> RouteHashes {
        RouteHashes {
            path_sha256: sha256_hex(&self.path_secret),
            token_sha256: sha256_hex(&self.secret_token),
        }
    }
}

fn random_secret() -> Result<String, rand::rngs::SysError> {
    use rand::TryRng;
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng.try_fill_bytes(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(text: &str) -> String {
    use std::fmt::Write;
    Sha256::digest(text.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The previous pair during its grace period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Previous {
    /// The pair.
    pub pair: Pair,
    /// When it stops being routed.
    pub expires_at: Timestamp,
}

/// What the generated Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSecret {
    /// The pair registered with Telegram.
    pub current: Pair,
    /// The pair before the last rotation, if still in its grace period.
    pub previous: Option<Previous>,
    /// The rotate annotation value the current pair answers.
    pub rotation_observed: Option<String>,
    /// When the current pair was generated.
    pub generated_at: Option<Timestamp>,
    /// SHA-256 of the token the pair was registered with.
    pub token_sha256: Option<String>,
}

/// Why a Secret's content cannot be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum InvalidSecret {
    /// A key is absent.
    #[error("the Secret has no key {0}")]
    MissingKey(&'static str),
    /// A key's value is not a usable secret.
    #[error("the Secret's key {0} is not a valid secret (1-256 characters of A-Za-z0-9_-)")]
    BadValue(&'static str),
}

impl WebhookSecret {
    /// A fresh pair for a bot.
    pub fn generate(
        rotation_observed: Option<String>,
        now: Timestamp,
        token_sha256: String,
    ) -> Result<Self, rand::rngs::SysError> {
        Ok(Self {
            current: Pair::generate()?,
            previous: None,
            rotation_observed,
            generated_at: Some(now),
            token_sha256: Some(token_sha256),
        })
    }

    /// Reads the Secret's content.
    pub fn from_secret(secret: &Secret) -> Result<Self, InvalidSecret> {
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let get = |key: &'static str| -> Result<Option<String>, InvalidSecret> {
            data.get(key)
                .map(|value| {
                    String::from_utf8(value.0.clone())
                        .ok()
                        .filter(|v| is_valid_secret(v))
                        .ok_or(InvalidSecret::BadValue(key))
                })
                .transpose()
        };
        let require = |key: &'static str| get(key)?.ok_or(InvalidSecret::MissingKey(key));
        let current = Pair {
            path_secret: require(keys::WEBHOOK_SECRET)?,
            secret_token: require(keys::SECRET_TOKEN)?,
        };
        let previous = match (
            get(keys::PREVIOUS_WEBHOOK_SECRET)?,
            get(keys::PREVIOUS_SECRET_TOKEN)?,
        ) {
            (Some(path_secret), Some(secret_token)) => {
                let expires_at = data
                    .get(keys::PREVIOUS_EXPIRES_AT)
                    .and_then(|v| std::str::from_utf8(&v.0).ok()?.parse::<Timestamp>().ok())
                    .ok_or(InvalidSecret::BadValue(keys::PREVIOUS_EXPIRES_AT))?;
                Some(Previous {
                    pair: Pair {
                        path_secret,
                        secret_token,
                    },
                    expires_at,
                })
            }
            _ => None,
        };
        let annotation = |key: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .cloned()
        };
        Ok(Self {
            current,
            previous,
            rotation_observed: annotation(annotations::ROTATION_OBSERVED),
            generated_at: annotation(annotations::GENERATED_AT).and_then(|t| t.parse().ok()),
            token_sha256: annotation(annotations::TOKEN_SHA256),
        })
    }

    /// The Secret for a bot, owned by it, with `webhook_url` for the current pair.
    pub fn to_secret(&self, bot: &ManagedBot, webhook_url: Option<&str>) -> Secret {
        let name = bot.metadata.name.clone().unwrap_or_default();
        let mut data = BTreeMap::new();
        let mut put = |key: &str, value: &str| {
            data.insert(key.to_string(), ByteString(value.as_bytes().to_vec()));
        };
        put(keys::WEBHOOK_SECRET, &self.current.path_secret);
        put(keys::SECRET_TOKEN, &self.current.secret_token);
        if let Some(url) = webhook_url {
            put(keys::WEBHOOK_URL, url);
        }
        if let Some(previous) = &self.previous {
            put(keys::PREVIOUS_WEBHOOK_SECRET, &previous.pair.path_secret);
            put(keys::PREVIOUS_SECRET_TOKEN, &previous.pair.secret_token);
            put(keys::PREVIOUS_EXPIRES_AT, &format_time(previous.expires_at));
        }
        let mut annotations = BTreeMap::new();
        if let Some(observed) = &self.rotation_observed {
            annotations.insert(annotations::ROTATION_OBSERVED.to_string(), observed.clone());
        }
        if let Some(at) = self.generated_at {
            annotations.insert(annotations::GENERATED_AT.to_string(), format_time(at));
        }
        if let Some(hash) = &self.token_sha256 {
            annotations.insert(annotations::TOKEN_SHA256.to_string(), hash.clone());
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(secret_name(&name)),
                namespace: bot.metadata.namespace.clone(),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "managedbot".to_string(),
                    ),
                    ("managedbot.dev/bot".to_string(), name),
                ])),
                annotations: Some(annotations),
                owner_references: bot.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            type_: Some("Opaque".to_string()),
            data: Some(data),
            ..Default::default()
        }
    }

    /// The routing the router needs for this Secret at `now`.
    pub fn routing(&self, now: Timestamp) -> Routing {
        Routing {
            current: self.current.hashes(),
            previous: self
                .previous
                .as_ref()
                .filter(|p| p.expires_at > now)
                .map(|p| {
                    let RouteHashes {
                        path_sha256,
                        token_sha256,
                    } = p.pair.hashes();
                    PreviousRouteHashes {
                        path_sha256,
                        token_sha256,
                        expires_at: p.expires_at.into(),
                    }
                }),
        }
    }
}

/// Telegram's rule for a secret_token, which our path secrets follow too.
fn is_valid_secret(value: &str) -> bool {
    (1..=256).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// RFC 3339 at whole seconds, as Kubernetes writes times.
pub fn format_time(at: Timestamp) -> String {
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", at).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot() -> ManagedBot {
        let mut bot: ManagedBot = serde_json::from_value(serde_json::json!({
            "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
            "metadata": {"name": "b", "namespace": "ns", "uid": "u-1"},
            "spec": {"tokenSecretRef": {"name": "t"}, "backend": {"url": "http://x"}}
        }))
        .unwrap();
        bot.metadata.uid = Some("u-1".into());
        bot
    }

    #[test]
    fn secrets_are_43_url_safe_characters_and_distinct() {
        let a = Pair::generate().unwrap();
        let b = Pair::generate().unwrap();
        for s in [&a.path_secret, &a.secret_token, &b.path_secret] {
            assert_eq!(s.len(), 43);
            assert!(is_valid_secret(s));
        }
        assert_ne!(a.path_secret, a.secret_token);
        assert_ne!(a, b);
    }

    #[test]
    fn a_secret_round_trips_through_the_kubernetes_object() {
        let now: Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        let mut ws = WebhookSecret::generate(Some("r1".into()), now, "abc".into()).unwrap();
        ws.previous = Some(Previous {
            pair: Pair::generate().unwrap(),
            expires_at: now,
        });
        let secret = ws.to_secret(&bot(), Some("https://x/webhook/y"));
        assert_eq!(secret.metadata.name.as_deref(), Some("b-webhook"));
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ManagedBot", Some(true))
        );
        assert_eq!(WebhookSecret::from_secret(&secret).unwrap(), ws);
        let data = secret.data.unwrap();
        assert_eq!(data[keys::WEBHOOK_URL].0, b"https://x/webhook/y");
        assert_eq!(data[keys::PREVIOUS_EXPIRES_AT].0, b"2026-12-04T10:00:00Z");
    }

    #[test]
    fn a_hand_edited_secret_is_refused_not_regenerated() {
        let now = Timestamp::UNIX_EPOCH;
        let mut secret = WebhookSecret::generate(None, now, "h".into())
            .unwrap()
            .to_secret(&bot(), None);
        let data = secret.data.as_mut().unwrap();
        data.insert(
            keys::SECRET_TOKEN.into(),
            ByteString(b"has spaces".to_vec()),
        );
        assert_eq!(
            WebhookSecret::from_secret(&secret),
            Err(InvalidSecret::BadValue(keys::SECRET_TOKEN))
        );
        secret.data.as_mut().unwrap().remove(keys::WEBHOOK_SECRET);
        assert_eq!(
            WebhookSecret::from_secret(&secret),
            Err(InvalidSecret::MissingKey(keys::WEBHOOK_SECRET))
        );
    }

    #[test]
    fn expired_previous_pairs_are_not_routed() {
        let now: Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        let mut ws = WebhookSecret::generate(None, now, "h".into()).unwrap();
        ws.previous = Some(Previous {
            pair: Pair::generate().unwrap(),
            expires_at: now,
        });
        assert!(ws.routing(now).previous.is_none());
        let earlier = now
            .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(1))
            .unwrap();
        assert!(ws.routing(earlier).previous.is_some());
        assert_eq!(ws.routing(now).current, ws.current.hashes());
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let pair = Pair::generate().unwrap();
        let shown = format!(
            "{:?}",
            WebhookSecret::generate(None, Timestamp::UNIX_EPOCH, "h".into()).unwrap()
        );
        assert!(!shown.contains(&pair.path_secret));
        assert!(format!("{pair:?}").contains("redacted"));
    }
}
