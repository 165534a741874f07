//! The router: the axum service Telegram posts updates to. It routes each
//! `POST {prefix}/webhook/{secret}` by the SHA-256 of the secret, from
//! `status.routing` of the ManagedBots it watches (it reads no Secret),
//! checks `X-Telegram-Bot-Api-Secret-Token` in constant time, and forwards
//! the update to the bot's backend (see design.md, "The router").
//!
//! Not built yet: this module is where it goes (issue 4).
