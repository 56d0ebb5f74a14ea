//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The shared reference material, beside the repository (or `$O2TOOLS_SHARED`).
pub fn shared() -> PathBuf {
    let p = std::env::var_os("O2TOOLS_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    assert!(
        p.join("conformance").is_dir(),
        "reference material not found at {} (clone ../shared beside the repository or set O2TOOLS_SHARED)",
        p.display()
    );
    p
}

/// Path of one of our binaries, built by cargo for the tests.
pub fn bin(name: &str) -> PathBuf {
    let p = match name {
        "o2cb" => env!("CARGO_BIN_EXE_o2cb"),
        other => panic!("unknown binary {other}"),
    };
    PathBuf::from(p)
}

/// Whether we run as root (CI does; loop devices and mount namespaces need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a command and returns its output, panicking with context when it
/// cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Requires a program on PATH, with a clear message naming the package.
pub fn require_program(prog: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{prog} is needed by this test: apt-get install -y {package} (as .ci/run does)"
    );
}

/// An OCFS2 volume image made by the real mkfs.ocfs2, with the UUID of the
/// captured test volume, attached read-only to a loop device while alive.
pub struct LoopVolume {
    pub dev: String,
    _dir: tempfile::TempDir,
}

/// UUID given to test volumes (the one in the captures).
pub const VOLUME_UUID: &str = "0C7010EBE28F45CF9B64CB60642047A8";

/// Makes a 256 MiB sparse image with mkfs.ocfs2 as the captures did.
pub fn mkfs_image(dir: &Path) -> PathBuf {
    require_program("mkfs.ocfs2", "ocfs2-tools");
    let img = dir.join("vol.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(256 << 20).unwrap();
    let out = output(
        Command::new("mkfs.ocfs2")
            .args([
                "-q",
                "-N",
                "4",
                "-b",
                "4K",
                "-C",
                "4K",
                "-L",
                "test",
                "-U",
                "0C7010EB-E28F-45CF-9B64-CB60642047A8",
                "--cluster-stack=o2cb",
                "--cluster-name=c1",
            ])
            .arg(&img),
    );
    assert!(
        out.status.success(),
        "mkfs.ocfs2 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

impl LoopVolume {
    pub fn new() -> Self {
        assert!(
            is_root(),
            "this test attaches a loop device and must run as root (CI does)"
        );
        require_program("losetup", "mount");
        let dir = tempfile::tempdir().unwrap();
        let img = mkfs_image(dir.path());
        let out = output(
            Command::new("losetup")
                .args(["-f", "--show", "-r"])
                .arg(&img),
        );
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        LoopVolume { dev, _dir: dir }
    }
}

impl Drop for LoopVolume {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}
