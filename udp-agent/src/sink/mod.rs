//! Where batches of entries go. `stdout` is the dry run and the default: it
//! prints exactly the entries a PutEvents request would carry.

pub mod stdout;

/// `--sink`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkKind {
    /// One PutEvents request entry per line on stdout (logs go to stderr).
    Stdout,
}
