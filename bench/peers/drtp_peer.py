"""The DRTP authors' code (ChFrenkel/DirectRandomTargetProjection) on MNIST, for
`bench/peers/anchors.sh`. Their training loop, model, hooks, optimizer and loss run
unchanged; only the data loader is replaced by one over preloaded tensors (pixels in
[0, 1], shape N×1×28×28, shuffled minibatches), as torchvision's per-image PIL transform
makes an epoch take minutes on 2 cores. Arguments after --data DIR go to their main.py.

  DRTP_SRC=checkout python drtp_peer.py --data DIR --cpu --train-mode DRTP ...
"""
import os
import sys

import torch

import mnist_idx

sys.path.insert(0, os.environ["DRTP_SRC"])
import main as drtp_main  # noqa: E402
import setup as drtp_setup  # noqa: E402

i = sys.argv.index("--data")
data = sys.argv[i + 1]
del sys.argv[i:i + 2]


def load_dataset_mnist(args, kwargs):
    xtr, ytr, xte, yte = mnist_idx.load(data)
    tr = torch.utils.data.TensorDataset(torch.from_numpy(xtr).view(-1, 1, 28, 28), torch.from_numpy(ytr))
    te = torch.utils.data.TensorDataset(torch.from_numpy(xte).view(-1, 1, 28, 28), torch.from_numpy(yte))
    loader = torch.utils.data.DataLoader
    args.input_size, args.input_channels, args.label_features = 28, 1, 10
    return (loader(tr, batch_size=args.batch_size, shuffle=True),
            loader(tr, batch_size=args.test_batch_size, shuffle=False),
            loader(te, batch_size=args.test_batch_size, shuffle=False))


drtp_setup.load_dataset_mnist = load_dataset_mnist
drtp_main.main()
