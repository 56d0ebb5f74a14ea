//! `dlmctl`: locks from the shell. See `man dlmctl`.

fn main() -> std::process::ExitCode {
    o2tools::cli::dispatch(o2tools::cli::dlmctl::main)
}
