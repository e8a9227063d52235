"""Bit-for-bit comparison of two fusedconv builds on a GPU: the outputs of every algorithm, in
every dtype and precision mode, over a matrix of shapes, then the benchmark shape's time.

    python benchmarks/compare_builds.py dump OUT.pt        with one build importable
    python benchmarks/compare_builds.py compare A.pt B.pt  exits 1 unless every output is equal

Run `dump` once per build (e.g. PYTHONPATH=/tmp/baseline for the build before a change) and
natively and under FUSEDCONV_FORCE_PTX=89; build_scripts/device_check.sh compare does all of it
in one device call. Inputs come from fixed seeds, so both builds see the same numbers; outputs
are compared as bits, NaN included.
"""
import random
import sys

import torch

import fusedconv
from fusedconv.bench import time_ms

# (n, c_in, c_out, h, w, kernel, groups, stride, padding, dilation): the benchmark's kind of
# shape at a smaller batch, the small problem, UNet-like padded shapes, C_in past one chunk of 8,
# C_out a multiple of 16 (the channels-last unit flavour), 5 x 5 and 1 x 1, stride and
# dilation, a strided view of x, and random odd shapes.
SHAPES = [
    (4, 8, 32, 256, 256, (3, 3), 8, (1, 1), (0, 0), (1, 1)),
    (1, 8, 32, 32, 32, (3, 3), 8, (1, 1), (0, 0), (1, 1)),
    (2, 64, 64, 64, 64, (3, 3), 32, (1, 1), (1, 1), (1, 1)),
    (2, 9, 48, 40, 70, (3, 3), 4, (1, 1), (0, 0), (1, 1)),
    (2, 7, 16, 30, 200, (3, 3), 4, (1, 1), (0, 0), (1, 1)),
    (2, 8, 32, 64, 64, (5, 5), 8, (1, 1), (2, 2), (1, 1)),
    (2, 8, 32, 64, 64, (1, 1), 8, (1, 1), (0, 0), (1, 1)),
    (2, 3, 20, 37, 41, (3, 2), 4, (2, 1), (1, 0), (1, 2)),
]


def _random_shapes(count, seed=7):
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        c_out = rng.choice([8, 12, 20, 32, 40, 64])
        groups = rng.choice([g for g in range(1, c_out + 1) if c_out % g == 0])
        kernel, dilation = (rng.randint(1, 5), rng.randint(1, 5)), (rng.randint(1, 2), rng.randint(1, 2))
        stride, padding = (rng.randint(1, 2), rng.randint(1, 2)), (rng.randint(0, 2), rng.randint(0, 2))
        h, w = rng.choice([9, 17, 31, 63]), rng.choice([11, 29, 65, 130])
        if all((k - 1) * d + 1 <= s + 2 * p for k, d, s, p in zip(kernel, dilation, (h, w), padding)):
            out.append((rng.randint(1, 3), rng.randint(1, 12), c_out, h, w, kernel, groups, stride, padding,
                        dilation))
    return out


MODES = (("fp32", torch.float32, "highest"), ("tf32", torch.float32, "high"),
         ("fp16", torch.float16, "highest"), ("bf16", torch.bfloat16, "highest"))


def _inputs(shape, dtype, seed):
    n, c_in, c_out, h, w, kernel, groups, *_ = shape
    g = torch.Generator().manual_seed(seed)
    t = lambda *s: torch.randn(*s, generator=g).to("cuda", dtype)  # noqa: E731
    x = torch.rand(n, c_in, h, w, generator=g).to("cuda", dtype)
    return (x, t(c_out, c_in, *kernel), t(c_out), t(c_out, 1, 1), t(c_out, 1, 1), t(c_out), t(c_out))


def dump(path):
    results = {}
    shapes = SHAPES + _random_shapes(12)
    for i, shape in enumerate(shapes):
        *_, groups, stride, padding, dilation = shape
        for name, dtype, precision in MODES:
            torch.set_float32_matmul_precision(precision)
            args = _inputs(shape, dtype, seed=i)
            for algorithm in ("",) + fusedconv.ALGORITHMS:
                key = f"{shape}|{name}|{algorithm or 'default'}"
                try:
                    with fusedconv.forced_algorithm(algorithm):
                        y = torch.ops.fusedconv.forward(*args, groups, 1e-5, list(stride), list(padding),
                                                        list(dilation))
                    results[key] = y.cpu()
                except ValueError as e:  # resident where a group does not fit: the same error in both
                    results[key] = str(e)
    torch.set_float32_matmul_precision("highest")
    results["benchmark_ms"] = _benchmark_ms()
    torch.save(results, path)
    print(f"dumped {len(results)} results to {path}; benchmark shape fp32 {results['benchmark_ms']}")


def _benchmark_ms(reps=20):
    """Median event time of the default choice on the benchmark shape, per dtype."""
    out = {}
    for name, dtype, precision in MODES:
        torch.set_float32_matmul_precision(precision)
        args = _inputs((128, 8, 32, 256, 256, (3, 3), 8), dtype, seed=0)
        # bench's timer (the baseline build has it too); one input set, as x (268 MB fp32) outsizes the L2.
        out[name] = round(time_ms(lambda _: torch.ops.fusedconv.forward(*args, 8), [None], reps=reps), 4)
    torch.set_float32_matmul_precision("highest")
    return out


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def _same(a, b):
    """Equal as bits (NaN payloads included), or the same error message."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.view(_BITS[a.element_size()]), b.view(_BITS[b.element_size()])))


def compare(path_a, path_b):
    a, b = torch.load(path_a), torch.load(path_b)
    ta, tb = a.pop("benchmark_ms"), b.pop("benchmark_ms")
    assert a.keys() == b.keys(), f"different result sets: {sorted(set(a) ^ set(b))[:5]}"
    differ = [k for k in a if not _same(a[k], b[k])]
    tensors = sum(not isinstance(v, str) for v in a.values())
    print(f"{path_a} vs {path_b}: {len(a)} results ({tensors} outputs, {len(a) - tensors} errors), "
          f"{len(differ)} differ")
    for k in differ[:10]:
        print("  differs:", k)
    print("  benchmark shape, ms:", {k: (ta[k], tb[k]) for k in ta})
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["dump"] and len(sys.argv) == 3:
        dump(sys.argv[2])
    elif sys.argv[1:2] == ["compare"] and len(sys.argv) == 4:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
