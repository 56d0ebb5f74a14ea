//! Man pages and shell completions, generated from the clap definitions.
