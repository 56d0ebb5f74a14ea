//! `o2cb`: manage the cluster configuration. See `man o2cb`.

fn main() -> std::process::ExitCode {
    o2tools::cli::dispatch(o2tools::cli::o2cb::main)
}
