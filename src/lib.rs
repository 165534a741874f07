//! managedbot: a Kubernetes operator that owns the webhook wiring of Telegram
//! bots. One module per part; `main.rs` only dispatches the command line.

pub mod cli;
pub mod commands;
pub mod controller;
pub mod metrics;
pub mod reference;
pub mod resource;
pub mod router;
pub mod telegram;
pub mod telemetry;
