"""Where the small problem's time goes: host wall per call through the module and through the
bare op, against the device time per call (a CUDA graph of 100 calls, replayed, so no host
work is counted), for the default and each algorithm, and each resident config that holds a
group.

Needs a CUDA GPU and fusedconv installed. On the device machine, from the repository root:
    CC=/usr/bin/gcc CXX=/usr/bin/g++ python3 -m pip install --no-build-isolation --no-deps . -q \\
        && python3 benchmarks/small_probe.py [--size 32] [--batch 1] [--dtype fp32]
"""
import argparse

import torch

import fusedconv
from fusedconv.bench import DTYPES, wall_us_per_call

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=32)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
a = p.parse_args()
dt = DTYPES[a.dtype]
torch.manual_seed(0)
m = fusedconv.ModelNew(8, 32, 3, 8, (32, 1, 1), (32, 1, 1)).cuda().to(dt)
x = torch.randn(a.batch, 8, a.size, a.size, device="cuda").to(dt)
c, gn = m.conv, m.group_norm
args = (x, c.weight, c.bias, m.bias, m.scale, gn.weight, gn.bias, 8, 1e-5, [1, 1], [0, 0], [1, 1])
op = torch.ops.fusedconv.forward


def wall_us(fn):
    return wall_us_per_call(lambda _: fn(), None)  # the benchmark's own measure


def graph_us(fn, calls=100, replays=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        g.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / (calls * replays)


def report(name):
    try:
        op(*args)
    except ValueError as e:  # a resident config or algorithm too small for this problem's groups
        print(f"  {name:<14} {e}")
        return
    print(f"  {name:<14} module {wall_us(lambda: m(x)):6.1f} us  op {wall_us(lambda: op(*args)):6.1f} us"
          f"  device (graph) {graph_us(lambda: op(*args)):6.1f} us")


with torch.no_grad():
    print(f"small problem {a.batch}x8x{a.size}x{a.size} -> 32, {a.dtype}")
    for algo in ("",) + fusedconv.ALGORITHMS:
        with fusedconv.forced_algorithm(algo):
            report(algo or "default")
    for cfg in fusedconv.resident_configs():
        with fusedconv.forced_config(cfg):
            report(cfg)
    conv = torch.nn.functional.conv2d

    def eager():
        return torch.nn.functional.group_norm(torch.sigmoid((conv(x, c.weight, c.bias) + m.bias) * m.scale), 8,
                                              gn.weight, gn.bias)
    print(f"  eager          {wall_us(eager):6.1f} us")
    print(f"  empty op       {wall_us(lambda: torch.empty(1, 32, 30, 30, device='cuda')):6.1f} us (one at::empty)")
    print(f"  bare op call, no tensors {wall_us(lambda: torch.ops.fusedconv._get_config()):6.1f} us")
    args0 = (x[:0],) + args[1:]
    print(f"  op with batch 0 (dispatch, validation, empty y) {wall_us(lambda: op(*args0)):6.1f} us")
    print(f"  aten sigmoid alone (one element-wise launch: any one-kernel op's floor) "
          f"{wall_us(lambda: torch.sigmoid(x)):6.1f} us")
    print(f"  aten conv2d alone {wall_us(lambda: conv(x, c.weight, c.bias)):6.1f} us")
