//! IDX parsing, dataset loading, seeded batching, and the downloader against a local
//! HTTP server on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futureprop::Error;
use futureprop::data::download::{self, FileSpec, Remote};
use futureprop::data::idx::{encode_idx, parse_idx, read_idx};
use futureprop::data::{self, Batches, Normalize, shuffled_indices, synthetic};
use sha2::{Digest, Sha256};

mod common;

/// A folder with MNIST (see [`common::data_with`]); `None` skips the test.
fn mnist() -> Option<PathBuf> {
    common::data_with(&["mnist"])
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_round_trip_plain_and_gzip() {
    let data: Vec<u8> = (0..24).collect();
    let bytes = encode_idx(&[2, 3, 4], &data);
    let a = parse_idx(&bytes, Path::new("x")).unwrap();
    assert_eq!(
        (a.dims.clone(), a.data.clone()),
        (vec![2, 3, 4], data.clone())
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.gz");
    std::fs::write(&p, gz(&bytes)).unwrap();
    assert_eq!(read_idx(&p).unwrap(), a);
}

#[test]
fn malformed_idx_files_give_errors_naming_the_problem() {
    let good = encode_idx(&[2, 2], &[1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad magic",
            {
                let mut b = good.clone();
                b[0] = 7;
                b
            },
            "bad IDX magic",
        ),
        (
            "bad type",
            {
                let mut b = good.clone();
                b[2] = 0x0d;
                b
            },
            "not supported",
        ),
        ("short header", good[..6].to_vec(), "truncated IDX header"),
        (
            "truncated data",
            good[..good.len() - 1].to_vec(),
            "truncated",
        ),
        (
            "trailing data",
            {
                let mut b = good.clone();
                b.push(9);
                b
            },
            "trailing bytes",
        ),
        ("empty", vec![], "truncated IDX header"),
        ("zero dims", vec![0, 0, 8, 0], "zero dimensions"),
    ];
    for (label, bytes, want) in cases {
        let e = parse_idx(&bytes, Path::new("f.idx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("f.idx"), "{label}: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.gz");
    let mut z = gz(&good);
    z.truncate(z.len() - 6);
    std::fs::write(&p, &z).unwrap();
    let e = read_idx(&p).unwrap_err().to_string();
    assert!(e.contains("gzip") && e.contains("broken.gz"), "{e}");
}

fn write_set(dir: &Path, n_train: usize, n_labels: usize) {
    std::fs::create_dir_all(dir.join("mnist")).unwrap();
    let d = dir.join("mnist");
    std::fs::write(
        d.join("train-images-idx3-ubyte.gz"),
        gz(&encode_idx(&[n_train, 2, 2], &vec![255; n_train * 4])),
    )
    .unwrap();
    std::fs::write(
        d.join("train-labels-idx1-ubyte.gz"),
        gz(&encode_idx(&[n_labels], &vec![1; n_labels])),
    )
    .unwrap();
    std::fs::write(
        d.join("t10k-images-idx3-ubyte"),
        encode_idx(&[2, 2, 2], &[0; 8]),
    )
    .unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), encode_idx(&[2], &[3, 4])).unwrap();
}

#[test]
fn loader_checks_counts_and_accepts_plain_files() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 5, 5);
    let s = data::load(dir.path(), "mnist", Normalize::Unit, 1).unwrap();
    assert_eq!((s.train.len(), s.test.len(), s.train.features()), (4, 2, 4));
    assert_eq!(s.validation.unwrap().len(), 1);
    assert_eq!(s.test.labels, vec![3, 4]);
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 5, 4);
    let e = data::load(dir.path(), "mnist", Normalize::Unit, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 labels for 5 images"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = data::load(empty.path(), "mnist", Normalize::Unit, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("futureprop data fetch mnist"), "{e}");
}

#[test]
fn real_mnist_has_the_known_shape_and_mean() {
    let Some(d) = mnist() else { return };
    let s = data::load(&d, "mnist", Normalize::Unit, 0).unwrap();
    assert_eq!(
        (
            s.train.len(),
            s.test.len(),
            s.train.features(),
            s.train.classes
        ),
        (60000, 10000, 784, 10)
    );
    let mean = s.train.x.sum() / s.train.x.len() as f64;
    assert!((mean - 0.1307).abs() < 1e-4, "train mean {mean}");
    let st = data::load(&d, "mnist", Normalize::Standard, 0).unwrap();
    let m = st.train.x.sum() / st.train.x.len() as f64;
    let var = st.train.x.sum_sq() / st.train.x.len() as f64 - m * m;
    assert!(
        m.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
        "standardised mean {m} var {var}"
    );
}

#[test]
fn shuffling_is_seeded_and_batches_cover_the_epoch() {
    let a = shuffled_indices(1000, 7, 3);
    assert_eq!(a, shuffled_indices(1000, 7, 3));
    assert_ne!(a, shuffled_indices(1000, 7, 4));
    assert_ne!(a, shuffled_indices(1000, 8, 3));
    let mut s = a.clone();
    s.sort();
    assert_eq!(s, (0..1000).collect::<Vec<_>>());
    let d = synthetic::two_moons(103, 0.1, 0).unwrap();
    let b: Vec<_> = Batches::new(&d, 10, true, 1, 0)
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(b.len(), 11);
    assert_eq!(b.iter().map(|x| x.target.len()).sum::<usize>(), 103);
    assert_eq!(b[10].target.len(), 3);
}

#[test]
fn synthetic_sets_have_their_shapes() {
    let s = synthetic::spirals(90, 3, 0.0, 1).unwrap();
    assert_eq!((s.len(), s.features(), s.classes), (90, 2, 3));
    let (x, y) = synthetic::teacher_student(50, 4, 8, 2, 0.0, 1).unwrap();
    assert_eq!((x.shape(), y.shape()), (&[50, 4][..], &[50, 2][..]));
    assert_eq!(
        synthetic::two_moons(10, 0.1, 5).unwrap().x,
        synthetic::two_moons(10, 0.1, 5).unwrap().x
    );
}

/// Serves `files` (name → bytes) over HTTP/1.1 on 127.0.0.1 until the process ends.
fn serve(files: Vec<(String, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let files = Arc::new(files);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let files = files.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf);
                let path = req
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_string();
                match files.iter().find(|(n, _)| *n == path) {
                    Some((_, body)) => {
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(body);
                    }
                    None => {
                        let _ = write!(
                            s,
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                }
            });
        }
    });
    format!("http://{addr}/")
}

fn sha(b: &[u8]) -> &'static str {
    Box::leak(
        Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
            .into_boxed_str(),
    )
}

fn toy_remote(contents: &[Vec<u8>; 4]) -> Remote {
    let names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ];
    Remote {
        name: "toy",
        mirrors: &[],
        files: std::array::from_fn(|i| FileSpec {
            name: names[i],
            sha256: sha(&contents[i]),
        }),
    }
}

#[test]
fn download_verifies_and_caches_over_loopback() {
    let contents: [Vec<u8>; 4] = [
        encode_idx(&[3, 2, 2], &[9; 12]),
        encode_idx(&[3], &[1, 2, 3]),
        encode_idx(&[1, 2, 2], &[7; 4]),
        encode_idx(&[1], &[5]),
    ];
    let remote = toy_remote(&contents);
    let served: Vec<(String, Vec<u8>)> = remote
        .files
        .iter()
        .zip(&contents)
        .map(|(f, c)| (f.name.to_string(), gz(c)))
        .collect();
    let url = serve(served);
    let dir = tempfile::tempdir().unwrap();
    let got = download::fetch(dir.path(), &remote, Some(&url)).unwrap();
    assert_eq!(got.len(), 4);
    assert!(
        download::verify(dir.path(), &remote)
            .unwrap()
            .iter()
            .all(|(_, s)| *s == download::FileStatus::Ok)
    );
    // Second fetch: everything cached, nothing downloaded.
    assert!(
        download::fetch(dir.path(), &remote, Some(&url))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn corrupted_download_is_rejected_and_leaves_nothing_behind() {
    let contents: [Vec<u8>; 4] = [
        encode_idx(&[1, 1], &[1]),
        encode_idx(&[1], &[1]),
        encode_idx(&[1, 1], &[2]),
        encode_idx(&[1], &[2]),
    ];
    let remote = toy_remote(&contents);
    let mut served: Vec<(String, Vec<u8>)> = remote
        .files
        .iter()
        .zip(&contents)
        .map(|(f, c)| (f.name.to_string(), gz(c)))
        .collect();
    // The second file is served with one flipped byte.
    let mut bad = contents[1].clone();
    bad[8] ^= 0xff;
    served[1].1 = gz(&bad);
    let url = serve(served);
    let dir = tempfile::tempdir().unwrap();
    let e = download::fetch(dir.path(), &remote, Some(&url)).unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    let left: Vec<String> = std::fs::read_dir(dir.path().join("toy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec![remote.files[0].name.to_string()],
        "only the verified first file may remain"
    );
    // A file missing on the server is a download error naming the URL.
    let url = serve(vec![]);
    let e = download::fetch(tempfile::tempdir().unwrap().path(), &remote, Some(&url))
        .unwrap_err()
        .to_string();
    assert!(e.contains("download of") && e.contains("127.0.0.1"), "{e}");
}

#[test]
fn shared_mnist_verifies_against_the_published_hashes() {
    let Some(d) = mnist() else { return };
    let st = download::verify(&d, download::remote("mnist").unwrap()).unwrap();
    assert!(
        st.iter().all(|(_, s)| *s == download::FileStatus::Ok),
        "{st:?}"
    );
}

/// Writes a CIFAR-10 binary folder: 5 training files of `per` records and a test file
/// of 2; pixel p of record r is (r·7 + p) mod 256, labels r mod 10.
fn write_cifar(dir: &std::path::Path, per: usize) {
    let d = dir.join("cifar-10").join("cifar-10-batches-bin");
    std::fs::create_dir_all(&d).unwrap();
    let mut r = 0usize;
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for (i, f) in names.iter().enumerate() {
        let n = if i == 5 { 2 } else { per };
        let mut bytes = Vec::new();
        for _ in 0..n {
            bytes.push((r % 10) as u8);
            bytes.extend((0..3072).map(|p| ((r * 7 + p) % 256) as u8));
            r += 1;
        }
        std::fs::write(d.join(f), bytes).unwrap();
    }
}

#[test]
fn cifar10_binary_files_load_in_channel_major_order() {
    use futureprop::data::{Normalize, load};
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(tmp.path(), 3);
    let s = load(tmp.path(), "cifar-10", Normalize::None, 0).unwrap();
    assert_eq!(s.train.x.shape(), &[15, 3072]);
    assert_eq!(s.test.x.shape(), &[2, 3072]);
    assert_eq!(s.train.labels[..4], [0, 1, 2, 3]);
    assert_eq!(s.test.labels, vec![5, 6]);
    // Record 1, pixel 1024 (the first green value): (7 + 1024) mod 256.
    assert_eq!(
        s.train.x.get(3072 + 1024).unwrap(),
        ((7 + 1024) % 256) as f64
    );
    // Standard: every colour channel of the training set has mean 0 and sd 1.
    let s = load(tmp.path(), "cifar-10", Normalize::Standard, 5).unwrap();
    assert_eq!(s.train.len(), 10);
    assert_eq!(s.validation.as_ref().unwrap().len(), 5);
    let all = load(tmp.path(), "cifar-10", Normalize::Standard, 0).unwrap();
    let v = all.train.x.to_vec_f64();
    for c in 0..3 {
        let vals: Vec<f64> = v
            .chunks(3072)
            .flat_map(|img| img[c * 1024..(c + 1) * 1024].to_vec())
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let sd = (vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
        assert!(
            m.abs() < 1e-4 && (sd - 1.0).abs() < 1e-3,
            "channel {c}: {m} {sd}"
        );
    }
}

#[test]
fn broken_or_missing_cifar10_files_are_named() {
    use futureprop::data::{Normalize, load};
    let tmp = tempfile::tempdir().unwrap();
    let e = load(tmp.path(), "cifar-10", Normalize::Unit, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cifar-10") && e.contains("data_batch_1"), "{e}");
    write_cifar(tmp.path(), 2);
    let f = tmp
        .path()
        .join("cifar-10/cifar-10-batches-bin/data_batch_3.bin");
    let mut b = std::fs::read(&f).unwrap();
    b.pop();
    std::fs::write(&f, &b).unwrap();
    let e = load(tmp.path(), "cifar-10", Normalize::Unit, 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data_batch_3.bin") && e.contains("records"),
        "{e}"
    );
    b.push(0);
    b[3073] = 12;
    std::fs::write(&f, &b).unwrap();
    let e = load(tmp.path(), "cifar-10", Normalize::Unit, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 12"), "{e}");
}
