"""MNIST from the IDX files futureprop reads (DIR/mnist/*-ubyte.gz), for the peer
scripts: float32 pixels in [0, 1] (train 60000×784, test 10000×784) and int64 labels."""
import gzip
import os

import numpy as np


def idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def load(data_dir):
    d = os.path.join(data_dir, "mnist")
    x = lambda f, n: idx(os.path.join(d, f)).reshape(n, -1).astype(np.float32) / 255.0
    y = lambda f: idx(os.path.join(d, f)).astype(np.int64)
    return (x("train-images-idx3-ubyte.gz", 60000), y("train-labels-idx1-ubyte.gz"),
            x("t10k-images-idx3-ubyte.gz", 10000), y("t10k-labels-idx1-ubyte.gz"))
