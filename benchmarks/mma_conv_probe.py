"""Probe for issue 18's fp16/bf16 item on sm_89: the 3 x 3 conv of the channels-last copy with
x staged once per program by cp.async and multiplied by mma_v2, as a Gluon kernel on its own.
Written in session 11 with no device time left: compiled for sm_89 on the CPU (registers,
shared memory, PTX instruction counts), never run on a GPU. docs/performance-log.md (session
11, "facts for issue 18's fp16/bf16 item") gives the design and why it has this shape.

One program: one output row, 128 columns, all 32 output channels. Per kernel row kh, two
shared buffers [128, 16] filled from the channels-last x [N, H, W, 8] by 16-byte cp.async:
row r of buffer (kh, s) holds x[oh + kh, col0 + r + 2s, 0:8] ++ x[oh + kh, col0 + r + 2s + 1,
0:8], so one m16n8k16 K step covers the taps (kw 0, kw 1) of shift 0 and (kw 2, a zero
weight) of shift 1: 6 K steps a row, all 6 buffers' copies in flight at once. The weight is
packed [3, 2, 16, 32] to match. STORE: the fp32 conv values (the check); else each channel's
tile sum of sigmoid(conv) (the statistics pass's work, so the timing has its epilogue's cost
without the values' bytes).

    python benchmarks/mma_conv_probe.py --compile-only     # on any machine: sm_89 resources
    python benchmarks/mma_conv_probe.py [--arch 89]        # on a GPU: check, then time
"""
import argparse
import sys
import tempfile

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

BLOCK_W = 128
C_OUT = 32


@gluon.jit
def conv3x3_mma_probe_kernel(
    xt_ptr,   # [N, H, W, 8] fp16/bf16, contiguous: the channels-last copy (C_in = 8)
    wk_ptr,   # [3, 2, 16, 32] fp16/bf16: per kernel row, K steps (kw 0 | kw 1) and (kw 2 | 0)
    out_ptr,  # STORE: [N, 32, H_out, W_out] fp32 conv values; else [N, 32, H_out * num_tw] tile sums
    H, W, H_out, W_out, num_tw,
    STORE: gl.constexpr,
):
    pid = gl.program_id(0)
    tw = pid % num_tw
    rest = pid // num_tw
    oh = rest % H_out
    n = rest // H_out
    # The last column tile starts early enough to end at W_out, as the FMA conv's does.
    col0 = gl.minimum(tw * 128, W_out - 128)

    # cp.async sources: [128 rows, 16] halves of 8 channels, 16 bytes each.
    LC: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])
    r = gl.arange(0, 128, layout=gl.SliceLayout(1, LC))
    k = gl.arange(0, 16, layout=gl.SliceLayout(0, LC))
    col = gl.expand_dims(col0 + r, 1) + gl.expand_dims(k // 8, 0)  # the column each piece reads
    S: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    bufs = gl.allocate_shared_memory(xt_ptr.dtype.element_ty, [6, 128, 16], S)
    sample = xt_ptr + n.to(gl.int64) * H * W * 8
    for kh in gl.static_range(3):
        row = sample + (oh + kh) * W * 8
        for s in gl.static_range(2):
            c = col + 2 * s
            # Shift 1's second half (the zero-weight tap kw 3) reads one column past the
            # image on the last tile: masked, so cp.async fills zeros there.
            async_copy.async_copy_global_to_shared(bufs.index(kh * 2 + s), row + c * 8 + gl.expand_dims(k % 8, 0),
                                                   mask=c < W)
    async_copy.commit_group()

    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[4, 1], instr_shape=[16, 8])
    A: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    B: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    LW: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [4, 1], [1, 0])
    wr = gl.arange(0, 16, layout=gl.SliceLayout(1, LW))
    wc = gl.arange(0, 32, layout=gl.SliceLayout(0, LW))
    w_tile = gl.expand_dims(wr, 1) * 32 + gl.expand_dims(wc, 0)
    acc = gl.zeros([128, 32], gl.float32, MMA)
    async_copy.wait_group(0)
    gl.thread_barrier()  # every warp's copies landed before any warp reads another's rows
    for step in gl.static_range(6):
        w = gl.load(wk_ptr + step * 512 + w_tile)
        acc = mma_v2(bufs.index(step).load(A), gl.convert_layout(w, B), acc)

    LO: gl.constexpr = gl.BlockedLayout([4, 1], [32, 1], [1, 4], [0, 1])  # a warp: 128 columns of 8 channels
    v = gl.convert_layout(acc, LO)
    ow = col0 + gl.arange(0, 128, layout=gl.SliceLayout(1, LO))
    ch = gl.arange(0, 32, layout=gl.SliceLayout(0, LO))
    own = ow >= tw * 128
    if STORE:
        offs = ((n.to(gl.int64) * 32 + gl.expand_dims(ch, 0)) * H_out + oh) * W_out + gl.expand_dims(ow, 1)
        gl.store(out_ptr + offs, v, mask=gl.expand_dims(own, 1))
    else:
        sig = 1.0 / (1.0 + gl.exp2(v * -1.4426950408889634))
        sums = gl.sum(gl.where(gl.expand_dims(own, 1), sig, 0.0), axis=0)
        gl.store(out_ptr + (n.to(gl.int64) * 32 + ch) * (H_out * num_tw) + oh * num_tw + tw, sums)


def packed_weight(weight):
    """[32, 8, 3, 3] -> [3 kh, 2 steps, 16 k, 32 co]: step 0 k = (kw 0: ci 0-7, kw 1: ci 0-7),
    step 1 k = (kw 2: ci 0-7, zeros)."""
    w = weight.permute(2, 3, 1, 0)  # [kh, kw, ci, co]
    wk = torch.zeros(3, 2, 16, 32, dtype=weight.dtype, device=weight.device)
    wk[:, 0, :8], wk[:, 0, 8:], wk[:, 1, :8] = w[:, 0], w[:, 1], w[:, 2]
    return wk.contiguous()


SIGNATURE = {"xt_ptr": "*{dt}", "wk_ptr": "*{dt}", "out_ptr": "*fp32", "H": "i32", "W": "i32", "H_out": "i32",
             "W_out": "i32", "num_tw": "i32", "STORE": "constexpr"}


def compiled(arch, dtype, store):
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    sig = {a: t.format(dt=dtype) for a, t in SIGNATURE.items()}
    attrs = {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}
    return triton.compile(GluonASTSource(conv3x3_mma_probe_kernel, sig, {"STORE": store}, attrs),
                          target=GPUTarget("cuda", arch, 32), options=dict(num_warps=4))


def compile_report(arch):
    import re
    import subprocess
    from pathlib import Path
    cuobjdump = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    for dtype in ("fp16", "bf16"):
        for store in (True, False):
            k = compiled(arch, dtype, store)
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(k.asm["cubin"])
                f.flush()
                usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True,
                                       text=True).stdout
            m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
            ptx = k.asm["ptx"].splitlines()
            count = lambda s: sum(s in line for line in ptx)  # noqa: E731
            print(f"sm_{arch} {dtype} STORE={store}: registers {m.group(1)}, stack {m.group(2)}, local {m.group(4)}, "
                  f"shared {k.metadata.shared} B; PTX: {count('cp.async.cg')} cp.async, {count('ldmatrix')} ldmatrix, "
                  f"{count('mma.sync')} mma.sync")


def launcher(arch, dtype, store):
    """JIT for the GPU at hand, or the sm_<arch> PTX through the driver (as FUSEDCONV_FORCE_PTX)."""
    if not arch:
        return lambda grid, *a: conv3x3_mma_probe_kernel[(grid,)](*a, STORE=store, num_warps=4)
    k = compiled(arch, dtype, store)
    k.kernel = k.asm["ptx"].encode() + b"\0"  # the cubin runs only on its own arch
    return lambda grid, *a: k[(grid, 1, 1)](*a, store)


def run(arch, batch):
    from fusedconv.bench import time_ms
    failures = 0
    for dtype, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        for n, h, w in ((2, 10, 258), (1, 6, 130), (3, 5, 200)):  # one tile, ragged tiles
            g = torch.Generator(device="cuda").manual_seed(n * h + w)
            x = torch.rand(n, 8, h, w, device="cuda", generator=g).to(dt)
            weight = (torch.randn(32, 8, 3, 3, device="cuda", generator=g) * 0.3).to(dt)
            h_out, w_out = h - 2, w - 2
            num_tw = -(-w_out // BLOCK_W)
            out = torch.full((n, 32, h_out, w_out), float("nan"), device="cuda")
            launcher(arch, dtype, True)(n * h_out * num_tw, x.permute(0, 2, 3, 1).contiguous(), packed_weight(weight),
                                        out, h, w, h_out, w_out, num_tw)
            ref = torch.nn.functional.conv2d(x.double(), weight.double())
            err = (out.double() - ref).abs().max().item()
            ok = err < 1e-3 and bool(torch.isfinite(out).all())
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {dtype} n={n} {h}x{w}: max |err| {err:.1e}")
        x = torch.rand(batch, 8, 256, 256, device="cuda").to(dt)
        xt = x.permute(0, 2, 3, 1).contiguous()
        wk = packed_weight((torch.randn(32, 8, 3, 3, device="cuda") * 0.3).to(dt))
        sums = torch.empty(batch, 32, 254 * 2, device="cuda")
        launch = launcher(arch, dtype, False)
        ms = time_ms(lambda _: launch(batch * 254 * 2, xt, wk, sums, 256, 256, 254, 254, 2), [None])
        flop = 2 * batch * 32 * 254 * 254 * 72
        print(f"{dtype} statistics-pass shape, batch {batch}: {ms:.3f} ms, {flop / ms / 1e9:.0f} TFLOPS "
              f"(useful FLOPs; the MMAs do 4/3 of them)")
    print(f"{failures} failures")
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compile-only", action="store_true")
    p.add_argument("--arch", type=int, default=0)
    p.add_argument("--batch", type=int, default=128)
    a = p.parse_args()
    if a.compile_only:
        compile_report(a.arch or 89)
        return 0
    return run(a.arch, a.batch)


if __name__ == "__main__":
    sys.exit(main())
