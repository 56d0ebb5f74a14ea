//! Man pages and shell completions, generated from the clap definitions.
//!
//! The generated files are committed in `man/` and `completions/`; the test
//! `tests/generated_docs.rs` fails when they are stale and rewrites them when
//! run with `O2TOOLS_BLESS=1`. `man/cluster.conf.5` is written by hand.

use std::io;
use std::path::Path;

use clap::CommandFactory as _;

/// Every tool's clap command with its man section.
pub fn tools() -> Vec<(clap::Command, &'static str)> {
    vec![
        (super::o2cb::O2cbArgs::command(), "8"),
        (super::lockd::LockdArgs::command(), "8"),
        (super::dlmctl::DlmctlArgs::command(), "1"),
        (super::dlmfs::DlmfsArgs::command(), "8"),
        (super::hb_ctl::HbCtlArgs::command(), "8"),
    ]
}

/// `(file name, contents)` of every generated man page: one per tool and one
/// per subcommand (`o2cb-add-node.8`).
pub fn man_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for (cmd, section) in tools() {
        let name = cmd.get_name().to_owned();
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section(section)
            .source("o2tools")
            .manual("o2tools")
            .render(&mut buf)?;
        out.push((format!("{name}.{section}"), buf));
        for sub in cmd.get_subcommands() {
            let full = format!("{name}-{}", sub.get_name());
            let sub = sub
                .clone()
                .name(full.clone())
                .bin_name(format!("{name} {}", sub.get_name()));
            let mut buf = Vec::new();
            clap_mangen::Man::new(sub)
                .section(section)
                .source("o2tools")
                .manual("o2tools")
                .render(&mut buf)?;
            out.push((format!("{full}.{section}"), buf));
        }
    }
    Ok(out)
}

/// `(file name, contents)` of the bash, zsh and fish completions of every tool.
pub fn completions() -> Vec<(String, Vec<u8>)> {
    use clap_complete::{Shell, generate};
    let mut out = Vec::new();
    for (mut cmd, _) in tools() {
        let name = cmd.get_name().to_owned();
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut buf = Vec::new();
            generate(shell, &mut cmd, name.clone(), &mut buf);
            out.push((file, buf));
        }
    }
    out
}

/// Writes everything under `root` (`root/man`, `root/completions`).
pub fn write_all(root: &Path) -> io::Result<()> {
    for (dir, files) in [("man", man_pages()?), ("completions", completions())] {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes)?;
        }
    }
    Ok(())
}
