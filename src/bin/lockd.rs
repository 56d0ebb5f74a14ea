//! `lockd`: the o2tools lock daemon. See `man lockd`.

fn main() -> std::process::ExitCode {
    o2tools::cli::dispatch(o2tools::cli::lockd::main)
}
