//! The committed man pages and completions must be what the clap definitions
//! generate. Regenerate with `O2TOOLS_BLESS=1 cargo test --test generated_docs`.

use std::path::Path;

use o2tools::cli::generate;

#[test]
fn man_pages_and_completions_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("O2TOOLS_BLESS").is_some() {
        generate::write_all(root).unwrap();
    }
    let mut stale = Vec::new();
    let files = generate::man_pages()
        .unwrap()
        .into_iter()
        .map(|(n, b)| (format!("man/{n}"), b))
        .chain(
            generate::completions()
                .into_iter()
                .map(|(n, b)| (format!("completions/{n}"), b)),
        );
    for (name, bytes) in files {
        if std::fs::read(root.join(&name)).ok().as_deref() != Some(&bytes[..]) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files (run: O2TOOLS_BLESS=1 cargo test --test generated_docs): {stale:?}"
    );
}

#[test]
fn hand_written_format_page_exists() {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/cluster.conf.5"))
            .unwrap();
    assert!(page.contains(".TH CLUSTER.CONF 5"));
}
