//! `hb_ctl`: disk heartbeat regions. See `man hb_ctl`.

fn main() -> std::process::ExitCode {
    o2tools::cli::dispatch(o2tools::cli::hb_ctl::main)
}
