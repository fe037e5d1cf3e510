//! The IDX format of MNIST-style datasets (LeCun et al.), plain or gzip-compressed.
//!
//! Header: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions
//! `d`, then `d` big-endian u32 sizes; then the data, row-major.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Sizes of each dimension.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Reads a whole file, decompressing it when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    gunzip_if_gz(raw, path)
}

/// `raw` decompressed when it starts with the gzip magic bytes, else `raw`; `path` only
/// names the source in errors.
pub fn gunzip_if_gz(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes; `path` only names the source in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(Error::format(
            path,
            "truncated IDX header (fewer than 4 bytes)",
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::format(
            path,
            format!(
                "bad IDX magic {:02x}{:02x}{:02x}{:02x}: the first two bytes must be zero",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(Error::format(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (only 0x08, unsigned byte)",
                bytes[2]
            ),
        ));
    }
    let nd = bytes[3] as usize;
    if nd == 0 {
        return Err(Error::format(path, "IDX file declares zero dimensions"));
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(Error::format(
            path,
            format!(
                "truncated IDX header: {nd} dimensions need {header} bytes, file has {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::format(path, format!("IDX dimensions {dims:?} overflow")))?;
    let body = bytes.len() - header;
    if body != n {
        return Err(Error::format(
            path,
            format!(
                "IDX dimensions {dims:?} need {n} data bytes, file has {body} ({})",
                if body < n {
                    "truncated"
                } else {
                    "trailing bytes"
                }
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads an IDX file (plain or gzip).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    parse_idx(&read_maybe_gz(path)?, path)
}

/// Encodes an IDX array of unsigned bytes (for tests and tools).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}
