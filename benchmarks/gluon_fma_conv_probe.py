"""Issue 18's first step, a probe and not the product: the statistics pass of materialize (3 x 3
conv, + bias, x scale, sigmoid, fp32 values stored, per-row channel sums and M2) as a Gluon
kernel whose FP32 FMAs are register-blocked by an explicit layout: each thread owns CT output
channels x MT consecutive columns of one output row, so one weight value feeds MT FMAs and one
x value CT FMAs. The product's sm_89 accurate conv (Triton's FMA dot) runs this pass at ~15% of
the FP32 peak (docs/performance.md, the 4090 model); the issue's own probe of this layout
reached 56% on the H200.

    python benchmarks/gluon_fma_conv_probe.py compile          # any machine: sm_89 and sm_90
                                                               # images, registers, spills
    python benchmarks/gluon_fma_conv_probe.py run [--batch N]  # a GPU: float64 check, timing

`compile` compiles each arch in its own process (as the AOT build must for Gluon) and prints
each config's registers, stack and spill bytes from cuobjdump. `run` checks y and the partials
against float64 on fresh random inputs (outputs poisoned with NaN first), then times the pass
with device events (fusedconv.bench.time_ms: median of 20 after warm-up) and reports its
FLOP rate against the H200's 67 TFLOPS FP32 peak. `run --arch 89` compiles the sm_89 PTX and
loads it on any newer GPU, as the product's FUSEDCONV_FORCE_PTX=89 does.

Not yet run on a GPU (written in session 9, which had no device time left): the first device
session runs `run` natively and with `--arch 89`, then decides whether the layout earns a place
in triton_kernels/ with a plain-Triton twin.
"""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

# (name, CT channels a thread, MT columns a thread, TC threads along channels, warps, BLOCK_W
# columns a program); the layout covers [CT * TC, MT * (32 // TC) * warps] and repeats over
# [C_OUT, BLOCK_W]: CT x MT x repeats accumulators a thread.
CONFIGS = (
    ("ct4_mt8_w128", 4, 8, 8, 4, 128),  # 32 accumulators a thread, the probe
    # ("ct4_mt8_w256", 4, 8, 8, 4, 256), 64 a thread: 255 registers and a 104-128 byte stack
    ("ct4_mt4_w64", 4, 4, 8, 4, 64),    # 16: the smaller fallback
)
C_IN, C_OUT = 8, 32


@gluon.jit
def fma_conv_stats_probe(
    x_ptr,         # [N, C_IN, H, W] fp32, contiguous
    wt_ptr,        # [C_IN * 3 * 3, C_OUT] fp32: the weight transposed, a tap's channels adjacent
    bias_ptr,      # [C_OUT]: conv bias + bias
    scale_ptr,     # [C_OUT]
    v_ptr,         # [N, C_OUT, H_out, W_out] fp32, out: sigmoid((conv + bias) * scale)
    part_sum_ptr,  # [N, C_OUT, H_out, column blocks] fp32, out: each row block's sum per channel
    part_m2_ptr,   # [N, C_OUT, H_out, column blocks] fp32, out: its sum of squared deviations
    H, W, H_out, W_out,
    C_IN: gl.constexpr, C_OUT: gl.constexpr, BLOCK_W: gl.constexpr,
    CT: gl.constexpr, MT: gl.constexpr, TC: gl.constexpr, WARPS: gl.constexpr,
):
    layout: gl.constexpr = gl.BlockedLayout([CT, MT], [TC, 32 // TC], [1, WARPS], [1, 0])
    pid = gl.program_id(0)  # (sample, output row, column block), column blocks fastest
    num_wb = gl.cdiv(W_out, BLOCK_W)
    row = pid // num_wb
    n = row // H_out
    oh = row % H_out
    offs_c = gl.arange(0, C_OUT, layout=gl.SliceLayout(1, layout))
    offs_w = (pid % num_wb) * BLOCK_W + gl.arange(0, BLOCK_W, layout=gl.SliceLayout(0, layout))
    acc = gl.zeros([C_OUT, BLOCK_W], gl.float32, layout)
    x_row0 = x_ptr + n.to(gl.int64) * (C_IN * H * W) + oh * W
    for ci in gl.static_range(C_IN):
        for kh in gl.static_range(3):
            row_ptr = x_row0 + (ci * H + kh) * W
            for kw in gl.static_range(3):
                xv = gl.load(row_ptr + offs_w + kw, mask=offs_w + kw < W, other=0.0)
                wv = gl.load(wt_ptr + ((ci * 3 + kh) * 3 + kw) * C_OUT + offs_c)
                acc += gl.expand_dims(wv, 1) * gl.expand_dims(xv, 0)
    # Epilogue: sigmoid from exp (no tl.sigmoid), then the row's statistics over valid columns.
    b = gl.expand_dims(gl.load(bias_ptr + offs_c), 1)
    s = gl.expand_dims(gl.load(scale_ptr + offs_c), 1)
    y = 1.0 / (1.0 + gl.exp(-(acc + b) * s))
    col_ok = gl.expand_dims(offs_w < W_out, 0)
    y = gl.where(col_ok, y, 0.0)
    out = gl.expand_dims((n * C_OUT + offs_c) * H_out + oh, 1) * W_out + gl.expand_dims(offs_w, 0)
    gl.store(v_ptr + out, y, mask=col_ok)
    row_sum = gl.sum(y, axis=1)
    count = gl.minimum(W_out - (pid % num_wb) * BLOCK_W, BLOCK_W)
    d = gl.where(col_ok, y - gl.expand_dims(row_sum / count, 1), 0.0)
    part = ((n * C_OUT + offs_c) * H_out + oh) * num_wb + pid % num_wb
    gl.store(part_sum_ptr + part, row_sum)
    gl.store(part_m2_ptr + part, gl.sum(d * d, axis=1))


def _compile(arch, config):
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    name, ct, mt, tc, warps, block_w = config
    constexprs = dict(C_IN=C_IN, C_OUT=C_OUT, BLOCK_W=block_w, CT=ct, MT=mt, TC=tc, WARPS=warps)
    signature = {a: ("constexpr" if a in constexprs else "*fp32" if a.endswith("_ptr") else "i32")
                 for a in fma_conv_stats_probe.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fma_conv_stats_probe.arg_names) if a.endswith("_ptr")}
    src = GluonASTSource(fma_conv_stats_probe, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))


def _resources(cubin):
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fma_probe_{os.getpid()}.cubin"
    path.write_bytes(cubin)
    out = subprocess.run([str(tool), "--dump-resource-usage", str(path)], check=True, capture_output=True,
                         text=True).stdout
    path.unlink()
    reg, stack, _, local = map(int, re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out).groups())
    return dict(registers=reg, stack_bytes=stack, spill_bytes=local)


def cmd_compile_one(arch):
    report = []
    for config in CONFIGS:
        compiled = _compile(arch, config)
        ffma = compiled.asm["ptx"].count("fma.rn.f32")
        report.append(dict(arch=arch, config=config[0], shared=compiled.metadata.shared, ptx_fma=ffma,
                           **_resources(compiled.asm["cubin"])))
    print(json.dumps(report))


def cmd_compile():
    """Each arch in its own process: a Hopper-only op compiled for sm_89 can abort the process."""
    ok = True
    for arch in (89, 90):
        r = subprocess.run([sys.executable, __file__, "compile-one", str(arch)], capture_output=True, text=True,
                           env=dict(os.environ, TRITON_INTERPRET="0"))
        if r.returncode:
            print(f"sm_{arch}: compile failed\n{r.stderr[-3000:]}")
            ok = False
            continue
        for e in json.loads(r.stdout.strip().splitlines()[-1]):
            print(f"sm_{e['arch']} {e['config']:12s} registers {e['registers']:3d}  stack {e['stack_bytes']}  "
                  f"spills {e['spill_bytes']}  shared {e['shared']}  fma in PTX {e['ptx_fma']}")
            ok &= e["spill_bytes"] == 0 and e["stack_bytes"] == 0
    return 0 if ok else 1


def cmd_run(batch, arch):
    import torch

    from fusedconv.bench import time_ms
    torch.manual_seed(0)
    h = w = 256
    h_out, w_out = h - 2, w - 2
    x = torch.rand(batch, C_IN, h, w, device="cuda")
    weight = torch.randn(C_OUT, C_IN, 3, 3, device="cuda") * 0.2
    bias, scale = torch.randn(C_OUT, device="cuda"), torch.randn(C_OUT, device="cuda")
    wt = weight.reshape(C_OUT, -1).t().contiguous()
    ref = torch.sigmoid((torch.nn.functional.conv2d(x.double(), weight.double()) + bias.double()[:, None, None])
                        * scale.double()[:, None, None])
    flop = 2 * batch * C_OUT * h_out * w_out * C_IN * 9
    for config in CONFIGS:
        name, ct, mt, tc, warps, block_w = config
        kwargs = dict(C_IN=C_IN, C_OUT=C_OUT, BLOCK_W=block_w, CT=ct, MT=mt, TC=tc, WARPS=warps, num_warps=warps)
        blocks = -(-w_out // block_w)
        v = torch.full((batch, C_OUT, h_out, w_out), float("nan"), device="cuda")
        psum = torch.full((batch, C_OUT, h_out, blocks), float("nan"), device="cuda")
        pm2 = torch.full_like(psum, float("nan"))
        args = (x, wt, bias, scale, v, psum, pm2, h, w, h_out, w_out)
        if arch:  # the sm_89 PTX, JIT-compiled by the driver, as the product's forced PTX runs it
            compiled = _compile(arch, config)
            # Its PTX, not its cubin (which only runs on that arch): the driver JIT-compiles it.
            compiled.kernel = compiled.asm["ptx"].encode() + b"\0"
            # A compiled kernel's launcher takes every argument, constexprs included, in order.
            every = args + (C_IN, C_OUT, block_w, ct, mt, tc, warps)
            launch = lambda: compiled[(batch * h_out * blocks, 1, 1)](*every)  # noqa: E731
        else:
            launch = lambda: fma_conv_stats_probe[(batch * h_out * blocks,)](*args, **kwargs)  # noqa: E731
        launch()
        torch.cuda.synchronize()
        err = (v.double() - ref).abs().max().item()
        # The row's statistics from its column blocks (Chan's merge, as group_stats does).
        cnt = torch.tensor([min(block_w, w_out - b * block_w) for b in range(blocks)], device="cuda",
                           dtype=torch.float64)
        sums = psum.double()
        mean = sums.sum(-1) / w_out
        m2 = (pm2.double() + cnt * (sums / cnt - mean[..., None]) ** 2).sum(-1)
        sum_err = (sums.sum(-1) - ref.sum(-1)).abs().max().item()
        m2_ref = ((ref - ref.mean(-1, keepdim=True)) ** 2).sum(-1)
        m2_err = ((m2 - m2_ref).abs() / m2_ref.clamp_min(1e-6)).max().item()
        ms = time_ms(lambda _: launch(), [None])
        print(f"{name:12s} {'sm_%d PTX' % arch if arch else 'native'}: {ms:.3f} ms, {flop / ms / 1e9:.1f} TFLOPS "
              f"({flop / ms / 1e9 / 67:.0%} of the H200's FP32 peak); max |v err| {err:.1e}, "
              f"|sum err| {sum_err:.1e}, M2 rel err {m2_err:.1e}, all written: {bool(torch.isfinite(v).all())}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("compile")
    one = sub.add_parser("compile-one")
    one.add_argument("arch", type=int)
    run = sub.add_parser("run")
    run.add_argument("--batch", type=int, default=128)
    run.add_argument("--arch", type=int, default=0, help="compile for this arch (e.g. 89) instead of the GPU's")
    a = p.parse_args()
    if a.cmd == "compile":
        return cmd_compile()
    if a.cmd == "compile-one":
        return cmd_compile_one(a.arch)
    return cmd_run(a.batch, a.arch)


if __name__ == "__main__":
    sys.exit(main())
