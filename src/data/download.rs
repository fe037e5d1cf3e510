//! Download, verification and caching of the canonical dataset files.
//!
//! Files are verified by the SHA-256 of their *decompressed* content (mirrors re-compress
//! the same bytes differently). A download is written to a temporary file in the target
//! folder and renamed into place only after it verified, so the cache never holds a
//! half-written or corrupt file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::idx::read_maybe_gz;
use crate::error::{Error, Result};

/// One file of a dataset.
#[derive(Debug, Clone, Copy)]
pub struct FileSpec {
    /// Canonical file name (gzip-compressed).
    pub name: &'static str,
    /// SHA-256 of the decompressed content.
    pub sha256: &'static str,
}

/// A dataset that can be fetched.
#[derive(Debug, Clone, Copy)]
pub struct Remote {
    /// Name on the CLI and folder name in the data directory.
    pub name: &'static str,
    /// Base URLs tried in order.
    pub mirrors: &'static [&'static str],
    /// Its files.
    pub files: [FileSpec; 4],
}

/// The datasets `futureprop data fetch` knows.
pub const REMOTES: &[Remote] = &[
    Remote {
        name: "mnist",
        mirrors: &[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
        files: [
            FileSpec {
                name: "train-images-idx3-ubyte.gz",
                sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            },
            FileSpec {
                name: "train-labels-idx1-ubyte.gz",
                sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            },
            FileSpec {
                name: "t10k-images-idx3-ubyte.gz",
                sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            },
            FileSpec {
                name: "t10k-labels-idx1-ubyte.gz",
                sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            },
        ],
    },
    Remote {
        name: "fashion-mnist",
        mirrors: &[
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ],
        files: [
            FileSpec {
                name: "train-images-idx3-ubyte.gz",
                sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            },
            FileSpec {
                name: "train-labels-idx1-ubyte.gz",
                sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            },
            FileSpec {
                name: "t10k-images-idx3-ubyte.gz",
                sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            },
            FileSpec {
                name: "t10k-labels-idx1-ubyte.gz",
                sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            },
        ],
    },
];

/// The remote description of a dataset by name.
pub fn remote(name: &str) -> Result<&'static Remote> {
    REMOTES.iter().find(|r| r.name == name).ok_or_else(|| {
        Error::unknown(
            "dataset",
            name,
            &REMOTES.iter().map(|r| r.name).collect::<Vec<_>>(),
        )
    })
}

/// Hex SHA-256 of the decompressed content of `path`.
pub fn content_sha256(path: &Path) -> Result<String> {
    let bytes = read_maybe_gz(path)?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a dataset file is, compressed or not.
pub fn locate(dir: &Path, file: &str) -> Option<PathBuf> {
    let gz = dir.join(file);
    if gz.is_file() {
        return Some(gz);
    }
    let plain = dir.join(file.trim_end_matches(".gz"));
    plain.is_file().then_some(plain)
}

/// Result of checking one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStatus {
    /// Present and the checksum matches.
    Ok,
    /// Not present.
    Missing,
    /// Present but the content differs.
    Mismatch { actual: String },
}

/// Checks every file of `remote` in `root/<name>/`.
pub fn verify(root: &Path, remote: &Remote) -> Result<Vec<(PathBuf, FileStatus)>> {
    let dir = root.join(remote.name);
    let mut out = Vec::new();
    for f in &remote.files {
        match locate(&dir, f.name) {
            None => out.push((dir.join(f.name), FileStatus::Missing)),
            Some(p) => {
                let actual = content_sha256(&p)?;
                let status = if actual == f.sha256 {
                    FileStatus::Ok
                } else {
                    FileStatus::Mismatch { actual }
                };
                out.push((p, status));
            }
        }
    }
    Ok(out)
}

/// Downloads the files of `remote` missing from `root/<name>/`, verifying each before it
/// is moved into place. `mirror` replaces the built-in base URLs. Returns the paths
/// fetched (files already present and valid are skipped).
pub fn fetch(root: &Path, remote: &Remote, mirror: Option<&str>) -> Result<Vec<PathBuf>> {
    let dir = root.join(remote.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mirrors: Vec<String> = match mirror {
        Some(m) => vec![if m.ends_with('/') {
            m.to_string()
        } else {
            format!("{m}/")
        }],
        None => remote.mirrors.iter().map(|s| s.to_string()).collect(),
    };
    let mut fetched = Vec::new();
    for f in &remote.files {
        if let Some(p) = locate(&dir, f.name)
            && content_sha256(&p)? == f.sha256
        {
            continue;
        }
        let target = dir.join(f.name);
        let mut last_err = None;
        for base in &mirrors {
            let url = format!("{base}{}", f.name);
            match fetch_one(&url, &target, f.sha256) {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                // A checksum failure is final: another mirror would not be trusted more.
                Err(e @ Error::Checksum { .. }) => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        fetched.push(target);
    }
    Ok(fetched)
}

fn fetch_one(url: &str, target: &Path, sha256: &str) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.part-{}",
        target
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("download"),
        std::process::id()
    ));
    let result = (|| {
        let resp = ureq::get(url).call().map_err(|e| Error::Download {
            url: url.to_string(),
            msg: e.to_string(),
        })?;
        let mut reader = resp.into_body().into_reader();
        let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| Error::Download {
                url: url.to_string(),
                msg: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).map_err(|e| Error::io(&tmp, e))?;
        }
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        let actual = match content_sha256(&tmp) {
            Ok(h) => h,
            Err(e) => {
                return Err(Error::Download {
                    url: url.to_string(),
                    msg: format!("unreadable content: {e}"),
                });
            }
        };
        if actual != sha256 {
            return Err(Error::Checksum {
                path: PathBuf::from(url),
                expected: sha256.to_string(),
                actual,
            });
        }
        std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
