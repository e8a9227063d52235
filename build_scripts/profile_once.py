"""Runs the op once at the benchmark shape after a warm-up call, for ncu:
    ncu --clock-control none -k regex:conv_ --launch-skip 3 --launch-count 3 \\
        --section SpeedOfLight ... python build_scripts/profile_once.py [--dtype fp32] [--config NAME]
"""
import argparse

import torch

import fusedconv

p = argparse.ArgumentParser()
p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
p.add_argument("--config", default="")
a = p.parse_args()
dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
torch.manual_seed(0)
m = fusedconv.ModelNew(8, 32, 3, 8, (32, 1, 1), (32, 1, 1)).cuda().to(dt)
x = torch.rand(128, 8, 256, 256, device="cuda").to(dt)
with torch.no_grad(), fusedconv.forced_config(a.config):
    for _ in range(2):
        m(x)
torch.cuda.synchronize()
