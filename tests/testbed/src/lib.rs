//! The test bed of managedbot: a real local control plane and a strict fake
//! of Telegram's Bot API, used by the integration tests, the end-to-end tests
//! and the demo.

pub mod backend;
pub mod controlplane;
pub mod fake_telegram;
pub mod shared;

pub use backend::Backend;
pub use controlplane::ControlPlane;
pub use fake_telegram::FakeTelegram;
pub use shared::{TestEnv, test_env};
