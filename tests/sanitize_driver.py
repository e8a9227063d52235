"""The workload tests/test_sanitizer.py runs under compute-sanitizer: ragged shapes, every
dtype, every algorithm, every block config, a channels_last and a sliced x. Inputs are made on
the CPU and copied over, and checked on the CPU, so the only kernels that run are fusedconv's.
Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1: each tensor is then its own allocation, and an
access one element past y or the workspace is outside every allocation, which memcheck sees."""
import os
import sys

import torch

import fusedconv
from helpers import DTYPES, Case, algorithms_for, assert_matches, prepared

CASES = [
    Case(n=2, c_in=3, c_out=20, h=13, w=11, kernel=(3, 2), groups=5, stride=(1, 2), padding=(1, 1), dilation=(2, 1)),
    Case(n=1, c_in=5, c_out=40, h=9, w=17, groups=8, padding=(0, 2)),
    Case(n=3, c_in=1, c_out=6, h=7, w=5, kernel=(1, 1), groups=3),
    # Unpadded 3 x 3: the conv kernels' flavour without bounds tests, on ragged tiles, with a
    # K past the unrolled steps, with a K that ends inside one (its loads masked by k alone),
    # and with stride and row dilation. The first two also take the Gluon FMA conv on sm_89
    # images (a shifted last column tile; C_out 20 and 12 inside one 32-channel block).
    Case(n=2, c_in=9, c_out=20, h=6, w=133, groups=4),
    Case(n=1, c_in=4, c_out=12, h=5, w=140, groups=3),
    # W a multiple of 16: recompute's aligned flavour of the Gluon FMA conv, its last column
    # tile running past W.
    Case(n=1, c_in=4, c_out=12, h=5, w=144, groups=3),
    Case(n=1, c_in=3, c_out=8, h=15, w=17, groups=2, stride=(2, 2), dilation=(2, 1)),
]


def main():
    forced = os.environ.get("FUSEDCONV_FORCE_PTX")
    images = torch.ops.fusedconv._device_images(0)
    major, minor = torch.cuda.get_device_capability()
    assert images == (f"sm_{forced} PTX" if forced else f"sm_{major}{minor} cubin"), images
    # Every block config under the cheap tools; the heuristic's choice (by C_out, which the
    # cases vary) under racecheck and synccheck, which cost far more per launch.
    every_config = os.environ.get("SANITIZE_CONFIGS", "all") == "all"
    runs = 0
    for case in CASES:
        for dtype in DTYPES.values():
            model, x, exp = prepared(case, "cuda", dtype)
            layouts = [x]
            if case is CASES[0]:
                layouts.append(x.cpu().contiguous(memory_format=torch.channels_last).cuda())
                wide = torch.rand(case.n, case.c_in, case.h, case.w + 3).to(dtype)
                wide[..., 1:1 + case.w] = x.cpu()
                layouts.append(wide.cuda()[..., 1:1 + case.w])
            for xl in layouts:
                # "" is the heuristic's own choice: on sm_89 images, the Gluon FMA conv where it applies.
                for config in (["", *fusedconv.conv_configs()] if every_config else [""]):
                    for algorithm in algorithms_for(model, xl):
                        with torch.no_grad(), fusedconv.forced_config(config), fusedconv.forced_algorithm(algorithm):
                            out = model(xl)
                        assert_matches(out.cpu(), exp, dtype)
                        runs += 1
    print(f"sanitize_driver ok: {runs} calls on {images}")


if __name__ == "__main__":
    sys.exit(main())
