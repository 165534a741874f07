fn main() -> std::process::ExitCode {
    managedbot::cli::main("managedbot")
}
