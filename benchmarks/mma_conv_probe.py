"""Probe for issue 18's fp16/bf16 item on sm_89: the 3 x 3 conv of the channels-last copy with
x staged once per program by cp.async and multiplied by mma_v2, as a Gluon kernel on its own.
docs/performance-log.md (sessions 11 and 12) gives the design, the predictions and the runs.

One program: BLOCK_H (RB) output rows x 128 columns x 32 channels, walked row by row. Input rows
go through a ring of 4 slots of two shared buffers [128, 16] each, filled from the
channels-last x [N, H, W, 8] by 16-byte cp.async: row r of buffer (slot, s) holds x[row, col0 +
r + 2s, 0:8] ++ x[row, col0 + r + 2s + 1, 0:8], so one m16n8k16 K step covers the taps (kw 0,
kw 1) of shift 0 and (kw 2, a zero weight) of shift 1: 6 K steps an output row. Each input row
is copied once per program, row i + 3's copy in flight while row i multiplies; the weight
([3, 2, 16, 32], to match) waits in shared memory. MODE conv stores the fp32 conv values (the
check), stats the statistics pass's work (each band tile's mean and M2 of sigmoid(conv), rows
merged as Chan's), norm the normalize pass's (y stored fp16/bf16).

Measured (session 12, H200, batch 128, natively and through the sm_89 PTX alike): correct
within 1.5e-6 of float64; statistics pass 0.61-0.66 ms, normalize pass 0.66-0.74 ms at RB 8,
16 and 32, against a prediction of 0.18-0.30 and the plain channels-last passes' ~0.4. The
normalize mode, without the statistics' per-row reductions, is as slow as the statistics
mode, so the likely bound is each row's wait for its copy: one row of prefetch, 2 barriers a
row, and 3 programs an SM (128-135 registers) to hide it, ~3.7 µs a row a program.

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
    xt_ptr,     # [N, H, W, 8] fp16/bf16, contiguous: the channels-last copy (C_in = 8)
    wk_ptr,     # [3, 2, 16, 32] fp16/bf16: per kernel row, K steps (kw 0 | kw 1) and (kw 2 | 0)
    out_ptr,    # MODE 0: [N, 32, H_out, W_out] fp32 conv values; MODE 2: the same, fp16, y
    stats_ptr,  # MODE 1: [N, 32, num_bands * num_tw, 2] fp32 out (band tile mean, M2);
                # MODE 2: [N, 32, 2] fp32 in (mean, rstd)
    H, W, H_out, W_out, num_tw, num_bands,
    MODE: gl.constexpr, RB: gl.constexpr,
):
    """One program: RB output rows x 128 columns x 32 channels. Input rows go through a ring
    of 4 slots (2 shift buffers each): each input row is copied once per program, the copy of
    row i + 3 runs while row i multiplies. MODE 0 stores the conv; 1 the statistics pass's work
    (per band tile and channel, the mean and M2 of sigmoid(conv), rows merged as Chan's); 2 the
    normalize pass's (y = (sigmoid(conv) - mean) * rstd, stored fp16)."""
    pid = gl.program_id(0)
    tw = pid % num_tw
    rest = pid // num_tw
    band = rest % num_bands
    n = rest // num_bands
    # The last column tile starts early enough to end at W_out, as the FMA conv's does.
    col0 = gl.minimum(tw * 128, W_out - 128)
    oh0 = band * RB
    rows = gl.minimum(H_out - oh0, RB)

    LC: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])
    r = gl.arange(0, 128, layout=gl.SliceLayout(1, LC))
    k = gl.arange(0, 16, layout=gl.SliceLayout(0, LC))
    col = gl.expand_dims(col0 + r, 1) + gl.expand_dims(k // 8, 0)  # the column each piece reads
    S: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    bufs = gl.allocate_shared_memory(xt_ptr.dtype.element_ty, [8, 128, 16], S)
    sample = xt_ptr + n.to(gl.int64) * H * W * 8
    for i in gl.static_range(3):
        for s in gl.static_range(2):
            c = col + 2 * s
            async_copy.async_copy_global_to_shared(bufs.index(i * 2 + s), sample + (oh0 + i) * W * 8 + c * 8
                                                   + gl.expand_dims(k % 8, 0), mask=c < W)
        async_copy.commit_group()

    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[4, 1], instr_shape=[16, 8])
    A: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    B: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    LW: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [4, 1], [1, 0])
    wr = gl.arange(0, 16, layout=gl.SliceLayout(1, LW))
    wc = gl.arange(0, 32, layout=gl.SliceLayout(0, LW))
    w_tile = wk_ptr + gl.expand_dims(wr, 1) * 32 + gl.expand_dims(wc, 0)
    # The six weight steps wait in shared memory (in registers they cost 48 of them each thread).
    wsm = gl.allocate_shared_memory(wk_ptr.dtype.element_ty, [8, 16, 32], S)
    for j in gl.static_range(6):
        wsm.index(j).store(gl.load(w_tile + j * 512))

    ow_m = col0 + gl.arange(0, 128, layout=gl.SliceLayout(1, MMA))
    ch_m = gl.arange(0, 32, layout=gl.SliceLayout(0, MMA))
    own_m = gl.expand_dims(ow_m >= tw * 128, 1)
    count = gl.minimum(W_out - tw * 128, 128).to(gl.float32)
    run_mean = gl.zeros([32], gl.float32, gl.SliceLayout(0, MMA))
    run_m2 = gl.zeros([32], gl.float32, gl.SliceLayout(0, MMA))
    if MODE == 2:
        mean_c = gl.load(stats_ptr + (n.to(gl.int64) * 32 + ch_m) * 2)
        rstd_c = gl.load(stats_ptr + (n.to(gl.int64) * 32 + ch_m) * 2 + 1)
    LO: gl.constexpr = gl.BlockedLayout([4, 1], [32, 1], [1, 4], [0, 1])  # a warp: 128 columns of 8 channels
    ow_o = col0 + gl.arange(0, 128, layout=gl.SliceLayout(1, LO))
    ch_o = gl.arange(0, 32, layout=gl.SliceLayout(0, LO))
    own_o = gl.expand_dims(ow_o >= tw * 128, 1)
    offs_o = gl.expand_dims(ch_o, 0) * (H_out * W_out) + gl.expand_dims(ow_o, 1)  # from a row's channel 0

    for i in range(rows):
        gl.thread_barrier()  # every warp is done with slot (i + 3) % 4, which row i - 1 read
        slot = (i + 3) % 4
        ih = oh0 + i + 3
        for s in gl.static_range(2):
            c = col + 2 * s
            async_copy.async_copy_global_to_shared(bufs.index(slot * 2 + s), sample + ih * W * 8 + c * 8
                                                   + gl.expand_dims(k % 8, 0), mask=(c < W) & (ih < H))
        async_copy.commit_group()
        async_copy.wait_group(1)  # this thread's copies of rows up to i + 2 landed
        gl.thread_barrier()       # and every other thread's
        acc = gl.zeros([128, 32], gl.float32, MMA)
        s0 = (i % 4) * 2
        s1 = ((i + 1) % 4) * 2
        s2 = ((i + 2) % 4) * 2
        acc = mma_v2(bufs.index(s0).load(A), wsm.index(0).load(B), acc)
        acc = mma_v2(bufs.index(s0 + 1).load(A), wsm.index(1).load(B), acc)
        acc = mma_v2(bufs.index(s1).load(A), wsm.index(2).load(B), acc)
        acc = mma_v2(bufs.index(s1 + 1).load(A), wsm.index(3).load(B), acc)
        acc = mma_v2(bufs.index(s2).load(A), wsm.index(4).load(B), acc)
        acc = mma_v2(bufs.index(s2 + 1).load(A), wsm.index(5).load(B), acc)
        row_out = out_ptr + (n.to(gl.int64) * 32 * H_out + oh0 + i) * W_out
        if MODE == 0:
            gl.store(row_out + offs_o, gl.convert_layout(acc, LO), mask=own_o)
        else:
            sig = 1.0 / (1.0 + gl.exp2(acc * -1.4426950408889634))
            if MODE == 1:
                row_mean = gl.sum(gl.where(own_m, sig, 0.0), axis=0) / count
                dev = gl.where(own_m, sig - gl.expand_dims(row_mean, 0), 0.0)
                row_m2 = gl.sum(dev * dev, axis=0)
                seen = i * count
                frac = count / (seen + count)
                delta = row_mean - run_mean
                run_mean += delta * frac
                run_m2 += row_m2 + delta * delta * seen * frac
            else:
                y = ((sig - gl.expand_dims(mean_c, 0)) * gl.expand_dims(rstd_c, 0)).to(out_ptr.dtype.element_ty)
                gl.store(row_out + offs_o, gl.convert_layout(y, LO), mask=own_o)
    if MODE == 1:
        part = ((n.to(gl.int64) * 32 + ch_m) * (num_bands * num_tw) + band * num_tw + tw) * 2
        gl.store(stats_ptr + part, run_mean)
        gl.store(stats_ptr + part + 1, run_m2)


def packed_weight(weight):
    """[32, 8, 3, 3] -> [3 kh, 2 steps, 16 k, 32 co]: step 0 k = (kw 0: ci 0-7, kw 1: ci 0-7),
    step 1 k = (kw 2: ci 0-7, zeros)."""
    w = weight.permute(2, 3, 1, 0)  # [kh, kw, ci, co]
    wk = torch.zeros(3, 2, 16, 32, dtype=weight.dtype, device=weight.device)
    wk[:, 0, :8], wk[:, 0, 8:], wk[:, 1, :8] = w[:, 0], w[:, 1], w[:, 2]
    return wk.contiguous()


SIGNATURE = {"xt_ptr": "*{dt}", "wk_ptr": "*{dt}", "out_ptr": "*{out}", "stats_ptr": "*fp32", "H": "i32",
             "W": "i32", "H_out": "i32", "W_out": "i32", "num_tw": "i32", "num_bands": "i32", "MODE": "constexpr",
             "RB": "constexpr"}
MODES = {"conv": 0, "stats": 1, "norm": 2}


def compiled(arch, dtype, mode, rb):
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    out = {0: "fp32", 1: "fp32", 2: dtype}[mode]
    sig = {a: t.format(dt=dtype, out=out) for a, t in SIGNATURE.items()}
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(4)}
    return triton.compile(GluonASTSource(conv3x3_mma_probe_kernel, sig, {"MODE": mode, "RB": rb}, attrs),
                          target=GPUTarget("cuda", arch, 32), options=dict(num_warps=4))


def compile_report(arch, bands):
    import re
    import subprocess
    from pathlib import Path
    cuobjdump = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    for dtype in ("fp16", "bf16"):
        for mode in MODES.values():
            k = compiled(arch, dtype, mode, bands[0])
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(k.asm["cubin"])
                f.flush()
                usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True,
                                       text=True).stdout
            m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
            ptx = k.asm["ptx"].splitlines()
            count = lambda s: sum(s in line for line in ptx)  # noqa: E731
            print(f"sm_{arch} {dtype} MODE={mode}: registers {m.group(1)}, stack {m.group(2)}, local {m.group(4)}, "
                  f"shared {k.metadata.shared} B; PTX: {count('cp.async.cg')} cp.async, {count('ldmatrix')} ldmatrix, "
                  f"{count('mma.sync')} mma.sync")


def launcher(arch, dtype, mode, rb):
    """JIT for the GPU at hand, or the sm_<arch> PTX through the driver (as FUSEDCONV_FORCE_PTX)."""
    if not arch:
        return lambda grid, *a: conv3x3_mma_probe_kernel[(grid,)](*a, MODE=mode, RB=rb, num_warps=4)
    k = compiled(arch, dtype, mode, rb)
    k.kernel = k.asm["ptx"].encode() + b"\0"  # the cubin runs only on its own arch
    return lambda grid, *a: k[(grid, 1, 1)](*a, mode, rb)


def time_ms(fn, warmup=3, reps=20):
    """Median of event timings after warm-up (fusedconv.bench.time_ms, without needing the build)."""
    import statistics
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(arch, batch, bands):
    failures = 0
    for dtype, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        for rb in bands:
            for n, h, w in ((2, 10, 258), (1, 6, 130), (3, 5 + rb, 200)):  # one tile, ragged tiles and bands
                g = torch.Generator(device="cuda").manual_seed(n * h + w)
                x = torch.rand(n, 8, h, w, device="cuda", generator=g).to(dt)
                weight = (torch.randn(32, 8, 3, 3, device="cuda", generator=g) * 0.3).to(dt)
                h_out, w_out = h - 2, w - 2
                num_tw, num_bands = -(-w_out // BLOCK_W), -(-h_out // rb)
                xt, wk = x.permute(0, 2, 3, 1).contiguous(), packed_weight(weight)
                ref = torch.nn.functional.conv2d(x.double(), weight.double())
                out = torch.full((n, 32, h_out, w_out), float("nan"), device="cuda")
                stats = torch.full((n, 32, num_bands * num_tw, 2), float("nan"), device="cuda")
                launcher(arch, dtype, 0, rb)(n * num_bands * num_tw, xt, wk, out, stats, h, w, h_out, w_out, num_tw,
                                             num_bands)
                err = (out.double() - ref).abs().max().item()
                ok = err < 1e-3 and bool(torch.isfinite(out).all())
                # The statistics mode: every band tile's mean of sigmoid(conv) against the reference's.
                launcher(arch, dtype, 1, rb)(n * num_bands * num_tw, xt, wk, out, stats, h, w, h_out, w_out, num_tw,
                                             num_bands)
                sig = torch.sigmoid(ref)
                tiles = [(b * rb, min(b * rb + rb, h_out), min(t * 128, w_out - 128), t * 128, min(t * 128 + 128, w_out))
                         for b in range(num_bands) for t in range(num_tw)]
                want_mean = torch.stack([sig[:, :, r0:r1, c1:c2].mean((2, 3)) for r0, r1, _, c1, c2 in tiles], 2)
                want_m2 = torch.stack([((sig[:, :, r0:r1, c1:c2] - sig[:, :, r0:r1, c1:c2].mean((2, 3), keepdim=True))
                                        ** 2).sum((2, 3)) for r0, r1, _, c1, c2 in tiles], 2)
                serr = max((stats[..., 0].double() - want_mean).abs().max().item(),
                           ((stats[..., 1].double() - want_m2).abs() / (want_m2.abs() + 1e-3)).max().item())
                ok = ok and serr < 1e-3
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {dtype} RB={rb} n={n} {h}x{w}: conv max |err| {err:.1e}, "
                      f"statistics {serr:.1e}")
        x = torch.rand(batch, 8, 256, 256, device="cuda").to(dt)
        xt = x.permute(0, 2, 3, 1).contiguous()
        wk = packed_weight((torch.randn(32, 8, 3, 3, device="cuda") * 0.3).to(dt))
        y = torch.empty(batch, 32, 254, 254, device="cuda", dtype=dt)
        copy_ms = time_ms(lambda: x.permute(0, 2, 3, 1).contiguous())
        flop = 2 * batch * 32 * 254 * 254 * 72
        for rb in bands:
            nb = -(-254 // rb)
            stats = torch.rand(batch, 32, nb * 2, 2, device="cuda")
            ms = {}
            for name, mode in (("stats", 1), ("norm", 2)):
                launch = launcher(arch, dtype, mode, rb)
                ms[name] = time_ms(lambda: launch(batch * nb * 2, xt, wk, y, stats, 256, 256, 254, 254, 2, nb))
            print(f"{dtype} RB={rb}, batch {batch}: statistics pass {ms['stats']:.3f} ms "
                  f"({flop / ms['stats'] / 1e9:.0f} TFLOPS useful), normalize pass {ms['norm']:.3f} ms; "
                  f"channels-last copy (torch) {copy_ms:.3f} ms; sum {ms['stats'] + ms['norm'] + copy_ms:.3f} ms")
    print(f"{failures} failures")
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compile-only", action="store_true")
    p.add_argument("--arch", type=int, default=0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--bands", default="8,16,32", help="rows a program (RB), comma-separated")
    a = p.parse_args()
    bands = [int(b) for b in a.bands.split(",")]
    if a.compile_only:
        compile_report(a.arch or 89, bands)
        return 0
    return run(a.arch, a.batch, bands)


if __name__ == "__main__":
    sys.exit(main())
