// The router allocates per request (headers, bodies, tasks); mimalloc does
// that with less contention between threads than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    managedbot::cli::main("managedbot")
}
