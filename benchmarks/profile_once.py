"""Runs the op at the benchmark shape after a warm-up call, for Nsight Compute: the default
choice unless --algorithm or --config forces one (the config names: `python -m fusedconv info`).

Needs a CUDA GPU, fusedconv installed and ncu. On the device machine, from the repository root:
    CC=/usr/bin/gcc CXX=/usr/bin/g++ python3 -m pip install --no-build-isolation --no-deps . -q \\
        && ncu --clock-control none -k regex:conv_ --launch-skip 3 --launch-count 3 \\
               --section SpeedOfLight -o $OUT/profile python3 benchmarks/profile_once.py \\
               [--dtype fp32] [--algorithm NAME] [--config NAME]
"""
import argparse

import torch

import fusedconv
from fusedconv.bench import DTYPES

p = argparse.ArgumentParser()
p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
p.add_argument("--algorithm", default="", choices=("",) + fusedconv.ALGORITHMS)
p.add_argument("--config", default="")
a = p.parse_args()
dt = DTYPES[a.dtype]
torch.manual_seed(0)
m = fusedconv.ModelNew(8, 32, 3, 8, (32, 1, 1), (32, 1, 1)).cuda().to(dt)
x = torch.rand(128, 8, 256, 256, device="cuda").to(dt)
with torch.no_grad(), fusedconv.forced_config(a.config), fusedconv.forced_algorithm(a.algorithm):
    for _ in range(2):
        m(x)
torch.cuda.synchronize()
