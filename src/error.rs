//! The crate's error type: every fallible public function returns [`Result`], and each
//! variant names the file, layer, shape or key at fault.

use std::path::PathBuf;

/// Errors raised by futureprop. Messages are one line and say what would be right.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two shapes that must agree do not.
    #[error("shape mismatch in {op}: {msg}")]
    Shape { op: String, msg: String },
    /// Tensors of different element types were combined.
    #[error("dtype mismatch in {op}: {lhs:?} vs {rhs:?}")]
    DType {
        op: &'static str,
        lhs: crate::tensor::DType,
        rhs: crate::tensor::DType,
    },
    /// A name (rule, optimizer, activation, dataset...) that does not exist.
    #[error("unknown {kind} '{name}'; known: {known}")]
    UnknownName {
        kind: &'static str,
        name: String,
        known: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is malformed.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A checksum did not match.
    #[error("{path}: SHA-256 mismatch (expected {expected}, got {actual}); the file was rejected")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A download failed.
    #[error("download of {url} failed: {msg}")]
    Download { url: String, msg: String },
    /// A dataset is not where it was looked for.
    #[error("{msg}")]
    MissingData { msg: String },
    /// A parameter or state key is missing from a store or checkpoint.
    #[error("missing key '{key}' in {store}")]
    MissingKey { key: String, store: String },
    /// Training diverged.
    #[error("loss became {value} at epoch {epoch}, step {step}; stopped ({checkpoint})")]
    NonFinite {
        value: f64,
        epoch: usize,
        step: u64,
        /// What is on disk: the last good checkpoint, or that there is none.
        checkpoint: String,
    },
    /// A resumed run is already at or past its end: there is nothing to train.
    #[error("nothing to do: {msg}")]
    NothingToDo { msg: String },
    /// A caller asked the work to stop ([`crate::train::request_stop`]: Python's Ctrl-C);
    /// what finished is kept.
    #[error("interrupted: {msg}")]
    Interrupted { msg: String },
    /// A check ran and found results outside their bounds (`reproduce --check`).
    #[error("check failed: {msg}")]
    CheckFailed { msg: String },
    /// A configuration value is invalid.
    #[error("invalid {what}: {msg}")]
    Config { what: String, msg: String },
}

impl Error {
    /// Shorthand for [`Error::Shape`].
    pub fn shape(op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Shape {
            op: op.into(),
            msg: msg.into(),
        }
    }
    /// Shorthand for [`Error::Config`].
    pub fn config(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            what: what.into(),
            msg: msg.into(),
        }
    }
    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// Shorthand for [`Error::Format`].
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// Shorthand for [`Error::UnknownName`]; the closest known name is suggested.
    pub fn unknown(kind: &'static str, name: &str, known: &[&str]) -> Self {
        let known_list = known.join(", ");
        Error::UnknownName {
            kind,
            name: name.to_string(),
            known: match closest(name, known) {
                Some(c) => format!("{known_list} (did you mean '{c}'?)"),
                None => known_list,
            },
        }
    }
}

/// The name in `known` nearest to `name` by edit distance, when it is near: at most a
/// third of the longer name's characters differ.
pub fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, k)| *d > 0 && *d * 3 <= name.chars().count().max(k.chars().count()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
