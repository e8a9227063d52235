"""Times every algorithm x block config the build carries (the conv configs of the build
report for the tiled algorithms, each resident config that holds a group) and the default on a
few shapes, in each dtype and precision mode (device events, median), for choosing the
defaults in triton_kernels/rules.py.

Needs a CUDA GPU and fusedconv installed. On the device machine, from the repository root:
    CC=/usr/bin/gcc CXX=/usr/bin/g++ python3 -m pip install --no-build-isolation --no-deps . -q \\
        && python3 benchmarks/sweep_configs.py
"""
import torch

import fusedconv
from fusedconv.bench import DTYPES, time_ms

SHAPES = [("bench", 128, 8, 32, 256, 3, 8, 0), ("unet64", 8, 64, 64, 128, 3, 32, 1),
          ("small", 1, 8, 32, 32, 3, 8, 0)]
MODES = (("fp32", "highest"), ("fp32", "high"), ("fp16", "highest"), ("bf16", "highest"))


def choices():
    """(algorithm, config) pairs to force: every tiled algorithm at every conv config, then
    resident at each of its configs."""
    tiled = [a for a in fusedconv.ALGORITHMS if a != "resident"]
    return ([(a, cfg) for a in tiled for cfg in fusedconv.conv_configs()]
            + [("resident", cfg) for cfg in fusedconv.resident_configs()])


for name, n, cin, cout, size, k, g, pad in SHAPES:
    for dt, prec in MODES:
        torch.set_float32_matmul_precision(prec)
        dtype = DTYPES[dt]
        m = fusedconv.FusedConvSigmoidGroupNorm(cin, cout, k, g, padding=pad).cuda().to(dtype)
        x = torch.rand(n, cin, size, size, device="cuda").to(dtype)
        row = []
        with torch.no_grad():
            for algo, cfg in choices():
                with fusedconv.forced_config(cfg), fusedconv.forced_algorithm(algo):
                    try:
                        row.append(f"{algo[:4]}/{cfg} {time_ms(m, [x], reps=10):.3f}")
                    except ValueError:  # a resident config that cannot hold a group here
                        pass
            row.append(f"default {time_ms(m, [x], reps=10):.3f}")
        print(f"{name:7s} {dt} {prec:8s} " + "  ".join(row), flush=True)
torch.set_float32_matmul_precision("highest")
