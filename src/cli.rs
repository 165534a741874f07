//! The command line: one binary, `managedbot`, with a subcommand per part.

use clap::{Parser, Subcommand};

/// A Kubernetes operator that owns the webhook wiring of Telegram bots.
#[derive(Parser, Debug)]
#[command(name = "managedbot", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the ManagedBot CustomResourceDefinition as YAML (pipe it to `kubectl apply -f -`).
    Crd,
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Crd => {
                print!("{}", crate::resource::crd_yaml());
                Ok(())
            }
        }
    }
}
