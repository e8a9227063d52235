"""Times every algorithm x conv block config the build carries on a few shapes (device
events, median), for choosing the heuristic's defaults. Usage: python build_scripts/sweep_configs.py"""
import torch

import fusedconv
from fusedconv.bench import time_ms


shapes = [("bench", 128, 8, 32, 256, 3, 8, 0), ("unet64", 8, 64, 64, 128, 3, 32, 1),
          ("small", 1, 8, 32, 32, 3, 8, 0)]
for name, n, cin, cout, size, k, g, pad in shapes:
    for dt, prec in (("fp32", "highest"), ("fp32", "high"), ("fp16", "highest")):
        torch.set_float32_matmul_precision(prec)
        dtype = torch.float32 if dt == "fp32" else torch.float16
        m = fusedconv.FusedConvSigmoidGroupNorm(cin, cout, k, g, padding=pad).cuda().to(dtype)
        x = torch.rand(n, cin, size, size, device="cuda").to(dtype)
        row = []
        with torch.no_grad():
            for algo in ("materialize", "recompute"):  # resident: only small groups fit
                for cfg in fusedconv.conv_configs():
                    with fusedconv.forced_config(cfg), fusedconv.forced_algorithm(algo):
                        row.append(f"{algo[:4]}/{cfg} {time_ms(m, [x], reps=10):.3f}")
            row.append(f"default {time_ms(m, [x], reps=10):.3f}")
        print(f"{name:7s} {dt} {prec:8s} " + "  ".join(row), flush=True)
torch.set_float32_matmul_precision("highest")
