//! The IDX format of MNIST-style datasets (LeCun et al.), plain or gzip-compressed.
//!
//! Header: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions
//! `d`, then `d` big-endian u32 sizes; then the data, row-major.

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
        gunzip(&raw, path)
    } else {
        Ok(raw)
    }
}

/// Decodes every member of a gzip file (RFC 1952), checking each member's CRC-32 and
/// length. The inflate loop stops with an error when a call makes no progress (flate2's
/// reader retries such a call forever on some corrupt streams).
pub fn gunzip(raw: &[u8], path: &Path) -> Result<Vec<u8>> {
    use flate2::{Crc, Decompress, FlushDecompress, Status};
    let bad = |msg: &str| Error::format(path, format!("corrupt gzip stream: {msg}"));
    let mut out: Vec<u8> = Vec::new();
    let mut at = 0usize;
    while at < raw.len() {
        let h = &raw[at..];
        if h.len() < 10 || h[0] != 0x1f || h[1] != 0x8b {
            return Err(bad("trailing bytes after the last member"));
        }
        if h[2] != 8 {
            return Err(bad("compression method is not deflate"));
        }
        let flags = h[3];
        if flags & 0xe0 != 0 {
            return Err(bad("reserved header flags set"));
        }
        let mut i = 10usize;
        if flags & 0x04 != 0 {
            let n = h
                .get(i..i + 2)
                .ok_or_else(|| bad("truncated extra field"))?;
            i += 2 + u16::from_le_bytes([n[0], n[1]]) as usize;
        }
        for flag in [0x08, 0x10] {
            // File name and comment: zero-terminated.
            if flags & flag != 0 {
                let end = h
                    .get(i..)
                    .and_then(|r| r.iter().position(|&b| b == 0))
                    .ok_or_else(|| bad("unterminated header string"))?;
                i += end + 1;
            }
        }
        if flags & 0x02 != 0 {
            i += 2;
        }
        let body = h.get(i..).ok_or_else(|| bad("truncated header"))?;
        let start = out.len();
        let mut d = Decompress::new(false);
        loop {
            if out.capacity() - out.len() < 1 << 16 {
                out.try_reserve(out.len().max(1 << 16))
                    .map_err(|_| bad("decompressed data does not fit in memory"))?;
            }
            let (in0, out0) = (d.total_in(), d.total_out());
            let rest = body.get(in0 as usize..).unwrap_or_default();
            let status = d
                .decompress_vec(rest, &mut out, FlushDecompress::None)
                .map_err(|e| bad(&e.to_string()))?;
            if status == Status::StreamEnd {
                break;
            }
            if d.total_in() == in0 && d.total_out() == out0 {
                return Err(bad(if rest.is_empty() {
                    "truncated deflate data"
                } else {
                    "no progress decoding deflate data"
                }));
            }
        }
        let used = d.total_in() as usize;
        let trailer = body
            .get(used..used + 8)
            .ok_or_else(|| bad("truncated trailer"))?;
        let mut crc = Crc::new();
        crc.update(&out[start..]);
        let want_crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let want_len = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
        if crc.sum() != want_crc || (out.len() - start) as u32 != want_len {
            return Err(bad(
                "CRC-32 or length of the data does not match the trailer",
            ));
        }
        at += i + used + 8;
    }
    Ok(out)
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
