//! The same program as `managedbot`, named so that kubectl finds it as the
//! plugin `kubectl managedbot` when it is on the PATH.

fn main() -> std::process::ExitCode {
    managedbot::cli::main("kubectl managedbot")
}
