# PyTorch twin of examples/models/small_resnet.toml on 3000 MNIST training images, 3 epochs,
# Adam 1e-3, batch 128, evaluated on 500 test images: a sanity check of BatchNorm2d,
# residual blocks with a strided 1x1 shortcut, global average pooling and dropout against
# `futureprop train --model examples/models/small_resnet.toml --train-limit 3000
# --test-limit 500 --epochs 3 --optimizer adam --lr 1e-3`.
# Usage: python small_resnet_peer.py [DATA_DIR]
import torch, torch.nn as nn, numpy as np, gzip, struct
torch.manual_seed(0); torch.set_num_threads(1)
def load(img, lab):
    with gzip.open(img) as f: _, n, r, c = struct.unpack(">IIII", f.read(16)); x = np.frombuffer(f.read(), np.uint8).reshape(n, 1, 28, 28)
    with gzip.open(lab) as f: f.read(8); y = np.frombuffer(f.read(), np.uint8)
    return x, y
import sys
d = (sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets") + "/mnist/"
x, y = load(d+"train-images-idx3-ubyte.gz", d+"train-labels-idx1-ubyte.gz")
xt, yt = load(d+"t10k-images-idx3-ubyte.gz", d+"t10k-labels-idx1-ubyte.gz")
m, s = (x/255.).mean(), (x/255.).std()
f = lambda a: torch.tensor((a/255. - m)/s, dtype=torch.float32)
X, Y, XT, YT = f(x[:3000]), torch.tensor(y[:3000]).long(), f(xt[:500]), torch.tensor(yt[:500]).long()
class Res(nn.Module):
    def __init__(s, a, b, st):
        super().__init__()
        s.f = nn.Sequential(nn.Conv2d(a,b,3,st,1,bias=False), nn.BatchNorm2d(b), nn.ReLU(), nn.Conv2d(b,b,3,1,1,bias=False), nn.BatchNorm2d(b))
        s.sc = nn.Sequential(nn.Conv2d(a,b,1,st,bias=False), nn.BatchNorm2d(b)) if st != 1 or a != b else nn.Identity()
    def forward(s, x): return s.f(x) + s.sc(x)
net = nn.Sequential(nn.Conv2d(1,16,3,1,1,bias=False), nn.BatchNorm2d(16), nn.ReLU(), Res(16,16,1), nn.ReLU(), nn.MaxPool2d(2),
                    Res(16,32,2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(32,10))
opt = torch.optim.Adam(net.parameters(), 1e-3)
for ep in range(3):
    net.train(); perm = torch.randperm(3000)
    for i in range(0, 3000, 128):
        idx = perm[i:i+128]; opt.zero_grad(); l = nn.functional.cross_entropy(net(X[idx]), Y[idx]); l.backward(); opt.step()
    net.eval()
    with torch.no_grad(): acc = (net(XT).argmax(1) == YT).float().mean().item()
    print(ep+1, round(l.item(),3), acc)
