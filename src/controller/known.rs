//! What this controller last read or wrote of each bot and of its two
//! Secrets, by resourceVersion. When the watch caches show an object at the
//! version known here, nothing changed since: a reconcile decides from what
//! it knows and reads nothing, so the echo of its own writes costs the API
//! server nothing. At any other version (the cache behind this controller's
//! last write, or another writer ahead of it) the object is read afresh.
//! Secret writes stay compare-and-swap, so a stale entry costs a read, never
//! a second secret.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use kube::{ResourceExt as _, runtime::reflector::ObjectRef};

use super::plan::{SecretState, TokenState};
use crate::resource::ManagedBot;

/// The known state of every bot this controller reconciles.
#[derive(Default)]
pub struct Known {
    bots: Mutex<HashMap<ObjectRef<ManagedBot>, Entry>>,
}

#[derive(Default)]
struct Entry {
    bot_version: Option<String>,
    token: Option<TokenEntry>,
    webhook: Option<(Option<String>, SecretState)>,
}

struct TokenEntry {
    secret: String,
    key: String,
    version: Option<String>,
    state: TokenState,
}

impl Known {
    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectRef<ManagedBot>, Entry>> {
        self.bots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the version of a bot this controller just wrote or read.
    pub fn saw_bot(&self, bot: &ManagedBot) {
        let version = bot.resource_version();
        self.lock()
            .entry(ObjectRef::from_obj(bot))
            .or_default()
            .bot_version = version;
    }

    /// Whether a cached bot is at the version last written or read here: then
    /// it holds every write of this controller.
    pub fn bot_is_current(&self, bot: &ManagedBot) -> bool {
        let version = bot.resource_version();
        version.is_some()
            && self
                .lock()
                .get(&ObjectRef::from_obj(bot))
                .is_some_and(|e| e.bot_version == version)
    }

    /// The token state read from `secret`/`key`, if the Secret is still at
    /// `version` (`None`: absent) as it was then.
    pub fn token(
        &self,
        bot: &ObjectRef<ManagedBot>,
        secret: &str,
        key: &str,
        version: Option<&str>,
    ) -> Option<TokenState> {
        let bots = self.lock();
        let token = bots.get(bot)?.token.as_ref()?;
        (token.secret == secret && token.key == key && token.version.as_deref() == version)
            .then(|| token.state.clone())
    }

    /// Records what `secret`/`key` at `version` gave.
    pub fn saw_token(
        &self,
        bot: &ObjectRef<ManagedBot>,
        secret: &str,
        key: &str,
        version: Option<String>,
        state: &TokenState,
    ) {
        self.lock().entry(bot.clone()).or_default().token = Some(TokenEntry {
            secret: secret.to_string(),
            key: key.to_string(),
            version,
            state: state.clone(),
        });
    }

    /// The webhook Secret as known, if it is still at `version` (`None`: absent).
    pub fn webhook(
        &self,
        bot: &ObjectRef<ManagedBot>,
        version: Option<&str>,
    ) -> Option<(SecretState, Option<String>)> {
        let bots = self.lock();
        let (known_version, state) = bots.get(bot)?.webhook.as_ref()?;
        (known_version.as_deref() == version).then(|| (state.clone(), known_version.clone()))
    }

    /// Records the webhook Secret at `version` (`None`: absent).
    pub fn saw_webhook(
        &self,
        bot: &ObjectRef<ManagedBot>,
        version: Option<String>,
        state: &SecretState,
    ) {
        self.lock().entry(bot.clone()).or_default().webhook = Some((version, state.clone()));
    }

    /// Forgets a bot: after a failed reconcile (what it knew may be wrong) or
    /// once the bot is gone.
    pub fn forget(&self, bot: &ObjectRef<ManagedBot>) {
        self.lock().remove(bot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telegram::BotToken;

    fn bot(version: &str) -> ManagedBot {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
            "metadata": {"name": "b", "namespace": "ns", "resourceVersion": version},
            "spec": {"tokenSecretRef": {"name": "t"}, "backend": {"url": "http://x/"}},
        }))
        .unwrap()
    }

    #[test]
    fn a_bot_is_current_only_at_the_version_last_seen() {
        let known = Known::default();
        assert!(!known.bot_is_current(&bot("5")), "nothing known yet");
        known.saw_bot(&bot("5"));
        assert!(known.bot_is_current(&bot("5")));
        assert!(!known.bot_is_current(&bot("4")), "a cache behind our write");
        assert!(
            !known.bot_is_current(&bot("6")),
            "another writer ahead of us"
        );
        known.forget(&ObjectRef::from_obj(&bot("5")));
        assert!(!known.bot_is_current(&bot("5")));
    }

    #[test]
    fn secrets_are_known_only_at_the_same_version_name_and_key() {
        let known = Known::default();
        let key = ObjectRef::from_obj(&bot("1"));
        let token = TokenState::Present(BotToken::parse("123:abc").unwrap());
        known.saw_token(&key, "t", "token", Some("7".into()), &token);
        assert!(matches!(
            known.token(&key, "t", "token", Some("7")),
            Some(TokenState::Present(_))
        ));
        assert!(known.token(&key, "t", "token", Some("8")).is_none());
        assert!(known.token(&key, "t", "other", Some("7")).is_none());
        assert!(known.token(&key, "u", "token", Some("7")).is_none());
        assert!(
            known.token(&key, "t", "token", None).is_none(),
            "deleted since"
        );
        known.saw_token(&key, "t", "token", None, &TokenState::SecretNotFound);
        assert!(matches!(
            known.token(&key, "t", "token", None),
            Some(TokenState::SecretNotFound)
        ));

        assert!(known.webhook(&key, None).is_none(), "never read");
        known.saw_webhook(&key, None, &SecretState::Missing);
        assert!(matches!(
            known.webhook(&key, None),
            Some((SecretState::Missing, None))
        ));
        assert!(known.webhook(&key, Some("9")).is_none(), "created since");
    }
}
