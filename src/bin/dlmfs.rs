//! `dlmfs`: the lock manager as a FUSE file system. See `man dlmfs`.

fn main() -> std::process::ExitCode {
    o2tools::cli::dispatch(o2tools::cli::dlmfs::main)
}
