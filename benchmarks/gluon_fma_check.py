"""The Gluon FMA conv kernels (triton_kernels/conv_fma_gluon.py) on their own, on a GPU, before
and beside the product's launcher: each pass against float64 and against its plain-Triton twin
(conv_stats_kernel / conv_norm_kernel with TAPS=3 in exact fp32, the sm_89 accurate path), over
shapes that reach every branch (channel masks, the shifted last column tile, both configs,
strided x, both flavours: variants._FMA_FLAVOURS), then each pass timed at the benchmark shape with its FLOP rate, and, where the op
runs sm_89 images, the whole op with the Gluon kernels' algorithms and the twins'.

    python benchmarks/gluon_fma_check.py [--arch 89] [--batch 128]
    FUSEDCONV_FORCE_PTX=89 python benchmarks/gluon_fma_check.py --arch 89    # also the op
    FUSEDCONV_FORCE_PTX=89 python benchmarks/gluon_fma_check.py --op-only    # the op alone

--arch 89 compiles the sm_89 PTX and loads it on the GPU at hand, as FUSEDCONV_FORCE_PTX=89
does; without it both kernels are JIT-compiled for the GPU. Exit status 1 on any mismatch.
"""
import argparse
import dataclasses
import sys

import torch
import triton

import fusedconv
from fusedconv.bench import time_ms
# The FMA kernels' weight as the exported file's wrapper packs it (and csrc/launch.cpp alike).
from fusedconv.export_wrapper import _fma_weight as packed
from fusedconv.triton_kernels import conv_sigmoid_groupnorm as K
from fusedconv.triton_kernels import variants as V

PEAK_TFLOPS = {"NVIDIA H200": 67.0, "NVIDIA H100 80GB HBM3": 67.0}


def fma_configs():
    return {c.name: c for c in V.FMA_CONV_CONFIGS}


class GluonLauncher:
    """One of the build's Gluon kernels (variants.KERNELS) at a config: JIT for this GPU, or
    its sm_<arch> PTX through the driver."""

    def __init__(self, kernel, cfg, arch):
        spec = V.KERNELS[kernel]
        self.options = cfg.compile_options  # the build's, register budget included
        self.fn, self.arch = spec.fn, arch
        self.constexprs = dict(cfg.meta, **spec.fixed)
        self.compiled = None
        if arch:
            from triton.backends.compiler import GPUTarget
            from triton.experimental.gluon._runtime import GluonASTSource
            fn = self.fn
            sig = V.signature(fn, "fp32", self.constexprs)
            # The build's compile-time facts: the packed weight 16-byte aligned, and for the
            # aligned flavour x too, with W and its strides multiples of 16 (as JIT
            # specialization finds them).
            attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if a in spec.divisible}
            compiled = triton.compile(GluonASTSource(fn, sig, self.constexprs, attrs),
                                      target=GPUTarget("cuda", arch, 32), options=self.options)
            compiled.kernel = compiled.asm["ptx"].encode() + b"\0"  # the cubin runs only on its own arch
            self.compiled = compiled

    def __call__(self, grid, *args):
        if self.compiled is not None:
            # A compiled kernel's launcher takes every argument, constexprs included, in order.
            every = list(args) + [self.constexprs[a] for a in self.fn.arg_names[len(args):]]
            self.compiled[(grid, 1, 1)](*every)
        else:
            self.fn[(grid,)](*args, **self.constexprs, **self.options)


def reference(x, w, conv_bias, bias, scale):
    z = torch.nn.functional.conv2d(x.double(), w.double(), conv_bias.double())
    return torch.sigmoid((z + bias.double()[:, None, None]) * scale.double()[:, None, None])


def case_inputs(n, c_in, c_out, h, w, strided, seed):
    """strided: x a window of a larger tensor (batch, channel and row strides not its own),
    "aligned" keeping the aligned flavour's facts (rules.fma_x_aligned)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    if strided == "aligned":
        big = torch.rand(n, c_in + 2, h + 3, w + 32, device="cuda", generator=g)
        x = big[:, 1:c_in + 1, 2:h + 2, 16:w + 16]
    elif strided:
        big = torch.rand(n, c_in + 2, h + 3, w + 5, device="cuda", generator=g)
        x = big[:, 1:c_in + 1, 2:h + 2, 3:w + 3]
    else:
        x = torch.rand(n, c_in, h, w, device="cuda", generator=g)
    weight = torch.randn(c_out, c_in, 3, 3, device="cuda", generator=g) * (2.0 / (c_in * 9)) ** 0.5
    params = [torch.randn(c_out, device="cuda", generator=g) for _ in range(5)]  # conv_bias bias scale gamma beta
    return x, weight.contiguous(), params


def run_passes(x, weight, params, groups, tile, launch_stats, launch_norm, eps=1e-5):
    """One problem through a stats kernel (values stored) and a norm kernel fed float64-exact
    statistics; returns (values, tile means, tile M2s, y)."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    h_out, w_out = h - 2, w - 2
    block_w, block_c = tile
    num_tw, num_c_blocks = -(-w_out // block_w), -(-c_out // block_c)
    grid = n * h_out * num_tw * num_c_blocks
    conv_bias, bias, scale, gamma, beta = params
    nan = float("nan")
    part_mean = torch.full((n, c_out, h_out * num_tw), nan, device="cuda")
    part_m2 = torch.full_like(part_mean, nan)
    values = torch.full((n, c_out, h_out, w_out), nan, device="cuda")
    geometry = (c_out, h, w, h_out, w_out, 3, 3, c_in * 9, *x.stride(), 1, 1, 0, 0, 1, 1,
                h_out, num_tw, num_c_blocks, 1)
    launch_stats(grid, x, weight, conv_bias, bias, scale, part_mean, part_m2, values, *geometry)
    ref = reference(x, weight, conv_bias, bias, scale)
    grouped = ref.reshape(n, groups, -1)
    stats = torch.stack([grouped.mean(-1), 1 / torch.sqrt(grouped.var(-1, unbiased=False) + eps)], -1).float()
    y = torch.full((n, c_out, h_out, w_out), nan, device="cuda")
    launch_norm(grid, x, weight, conv_bias, bias, scale, gamma, beta, stats.contiguous(), y, *geometry,
                groups, c_out // groups, 1, 1)
    torch.cuda.synchronize()
    return values, part_mean, part_m2, y, ref, stats


# The two flavours (variants._FMA_FLAVOURS): (the statistics kernel checked, storing its values
# to compare them; the statistics kernel timed; the normalize kernel). The aligned flavour has no
# stats_store image: its statistics pass is checked through the normalize pass's values and
# its own partials.
FLAVOURS = {"": ("conv3x3_fma_stats_store", "conv3x3_fma_stats", "conv3x3_fma_norm"),
            "aligned": ("conv3x3_fma_stats_aligned", "conv3x3_fma_stats_aligned", "conv3x3_fma_norm_aligned")}


def check(arch):
    """Every flavour and config on every case it takes, against float64 and the twin; returns
    the number of failures."""
    failures = 0
    cases = [  # (n, c_in, c_out, h, w, groups, strided): the benchmark's kind; channel masks and
        # a shifted last tile (W_out 130 = 128 + 2); C_in 3; W_out exactly one tile; strided x;
        # then the aligned flavour's: the benchmark's width, a last tile past W (W 144, 208),
        # W_out 78 (fma_w64), an aligned window of a larger x
        (2, 8, 32, 34, 258, 8, False), (2, 5, 20, 9, 132, 4, False), (3, 3, 40, 7, 66, 8, False),
        (1, 8, 32, 5, 130, 8, True), (2, 16, 64, 6, 200, 16, True),
        (2, 8, 32, 10, 256, 8, False), (2, 5, 20, 9, 144, 4, False), (2, 3, 40, 5, 208, 8, False),
        (3, 3, 40, 7, 80, 8, False), (2, 8, 32, 5, 176, 8, "aligned")]
    for flavour, (stats_name, _, norm_name) in FLAVOURS.items():
        for cfg in V.KERNELS[norm_name].configs:
            failures += check_config(arch, flavour, cfg.name, cfg, stats_name, norm_name, cases)
    return failures


def check_config(arch, flavour, name, cfg, stats_name, norm_name, cases):
    """One flavour and config over the cases it takes; returns the number of failures."""
    failures = 0
    # Only the first flavour's statistics kernel stores the values (stats_store).
    stores = V.KERNELS[stats_name].fixed.get("STORE_V", False)
    stats_k = GluonLauncher(stats_name, cfg, arch)
    norm_k = GluonLauncher(norm_name, cfg, arch)
    twin_meta = dict(BLOCK_H=1, BLOCK_W=cfg.meta["BLOCK_W"], BLOCK_C=cfg.meta["BLOCK_C"], BLOCK_K=16,
                     K_STEPS=0, TAPS=3, PRECISION="ieee")
    twin_stats = lambda grid, *a: K.conv_stats_kernel[(grid,)](*a, **twin_meta, STORE_V=True, num_warps=4)  # noqa
    twin_norm = lambda grid, *a: K.conv_norm_kernel[(grid,)](*a, **twin_meta, num_warps=4)  # noqa
    tile = (cfg.meta["BLOCK_W"], cfg.meta["BLOCK_C"])
    for seed, (n, c_in, c_out, h, w, groups, strided) in enumerate(cases):
        if w - 2 < cfg.meta["BLOCK_W"]:
            continue  # rules.fma_conv gives such images the twin
        x, weight, params = case_inputs(n, c_in, c_out, h, w, strided, seed)
        if (flavour == "aligned") != V.rules.fma_x_aligned(tile[0], x.data_ptr(), w, *x.stride()[:3]):
            continue  # the other flavour's case
        got = run_passes(x, weight, params, groups, tile,
                         lambda g, x_, w_, *a: stats_k(g, x_, packed(w_, tile[1]), *a),
                         lambda g, x_, w_, *a: norm_k(g, x_, packed(w_, tile[1]), *a))
        twin = run_passes(x, weight, params, groups, tile, twin_stats, twin_norm)
        values, part_mean, part_m2, y, ref, stats = got
        # float64 tile means and M2 over the same tiles
        w_out = w - 2
        num_tw = -(-w_out // tile[0])
        padded = torch.nn.functional.pad(ref, (0, num_tw * tile[0] - w_out), value=float("nan"))
        tiles = padded.reshape(*ref.shape[:3], num_tw, tile[0])
        ref_mean = tiles.nanmean(-1).reshape(part_mean.shape)
        ref_m2 = ((tiles - tiles.nanmean(-1, keepdim=True)) ** 2).nansum(-1).reshape(part_m2.shape)
        gn = (ref.reshape(n, groups, -1) - stats[..., :1].double()) * stats[..., 1:].double()
        gn = gn.reshape(ref.shape) * params[3].double()[:, None, None] + params[4].double()[:, None, None]
        errs = dict(values=(values.double() - ref).abs().max().item() if stores else 0.0,
                    mean=(part_mean.double() - ref_mean).abs().max().item(),
                    m2=((part_m2.double() - ref_m2).abs() / ref_m2.clamp_min(1e-3)).max().item(),
                    y=(y.double() - gn).abs().max().item())
        same_values = torch.equal(values, twin[0]) if stores else "not stored"
        twin_y = (y - twin[3]).abs().max().item()
        ok = (errs["values"] < 1e-6 and errs["mean"] < 1e-6 and errs["m2"] < 1e-4 and errs["y"] < 1e-4
              and (not stores or bool(torch.isfinite(values).all())) and bool(torch.isfinite(y).all())
              and twin_y < 1e-4)
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}{' ' + flavour if flavour else ''} "
              f"{'sm_%d PTX' % arch if arch else 'native'} "
              f"n={n} c_in={c_in} c_out={c_out} {h}x{w}{' strided' if strided else ''}: "
              + ", ".join(f"|{k} err| {v:.1e}" for k, v in errs.items())
              + f"; values bit-identical to the twin: {same_values}, |y - twin y| {twin_y:.1e}")
    return failures


def timing(arch, batch, caps):
    """Each pass alone at the benchmark shape, Gluon and twin, with the FLOP rate; the Gluon
    passes also at each register budget in `caps` (ptxas's maxnreg) besides the config's own."""
    x, weight, params = case_inputs(batch, 8, 32, 256, 256, False, 0)
    flop = 2 * batch * 32 * 254 * 254 * 8 * 9
    peak = PEAK_TFLOPS.get(torch.cuda.get_device_name(), float("nan"))
    conv_bias, bias, scale, gamma, beta = params
    stats = torch.rand(batch, 8, 2, device="cuda")
    y = torch.empty(batch, 32, 254, 254, device="cuda")
    for name, cfg in fma_configs().items():
        bw, bc = cfg.meta["BLOCK_W"], cfg.meta["BLOCK_C"]
        num_tw = -(-254 // bw)
        grid = batch * 254 * num_tw
        part = torch.empty(batch, 32, 254 * num_tw, device="cuda")
        geometry = (32, 256, 256, 254, 254, 3, 3, 72, *x.stride(), 1, 1, 0, 0, 1, 1, 254, num_tw, 1, 1)
        twin_meta = dict(BLOCK_H=1, BLOCK_W=bw, BLOCK_C=bc, BLOCK_K=16, K_STEPS=5, TAPS=3, PRECISION="ieee")
        runs = {}
        for cap in [cfg.maxnreg] + [c for c in caps if c != cfg.maxnreg]:
            capped = dataclasses.replace(cfg, maxnreg=cap)
            suffix = f" r{cap}" if cap else ""
            for flavour, (_, stats_name, norm_name) in FLAVOURS.items():
                if cfg not in V.KERNELS[norm_name].configs:
                    continue
                label = f"{flavour + ' ' if flavour else ''}gluon"
                runs[f"{label} stats{suffix}"] = (GluonLauncher(stats_name, capped, arch), "stats")
                runs[f"{label} norm{suffix}"] = (GluonLauncher(norm_name, capped, arch), "norm")
        if not arch:
            runs["twin stats"] = (lambda g, *a: K.conv_stats_kernel[(g,)](*a, **twin_meta, STORE_V=False,
                                                                         num_warps=4), "stats")
            runs["twin norm"] = (lambda g, *a: K.conv_norm_kernel[(g,)](*a, **twin_meta, num_warps=4), "norm")
        for label, (launch, kind) in runs.items():
            w = packed(weight, bc) if "gluon" in label else weight
            if kind == "stats":
                args = (x, w, conv_bias, bias, scale, part, part, part, *geometry)
            else:
                args = (x, w, conv_bias, bias, scale, gamma, beta, stats, y, *geometry, 8, 4, 1, 1)
            ms = time_ms(lambda _: launch(grid, *args), [None])
            tflops = flop / ms / 1e9
            print(f"{name} {label:24s} {'sm_%d PTX' % arch if arch else 'native'}: {ms:.3f} ms, {tflops:.1f} TFLOPS "
                  f"({tflops / peak:.0%} of {torch.cuda.get_device_name()}'s FP32 peak)")


def op_timing(batch):
    """The whole op at the benchmark shape, fp32 accurate, on sm_89 images: its default
    (recompute with both Gluon passes, the aligned flavour), the same on windows of a wider x
    that keep and that break the aligned flavour's facts (the two flavours over like memory),
    materialize with the Gluon statistics pass in L2-sized chunks, and the plain-Triton twins'
    materialize."""
    import contextlib
    images = torch.ops.fusedconv._device_images(torch.cuda.current_device())
    if not images.startswith("sm_89"):
        print(f"op timing skipped: the op runs {images}; set FUSEDCONV_FORCE_PTX=89")
        return
    torch.manual_seed(0)
    model = fusedconv.FusedConvSigmoidGroupNorm(8, 32, 3, 8).cuda()
    x = torch.rand(batch, 8, 256, 256, device="cuda")
    wide = torch.rand(batch, 8, 256, 272, device="cuda")
    with torch.no_grad():
        for label, context, xs in (("default: recompute, Gluon aligned", contextlib.nullcontext(), x),
                                   ("recompute, aligned window", contextlib.nullcontext(), wide[..., 16:]),
                                   ("recompute, unaligned window", contextlib.nullcontext(), wide[..., 15:271]),
                                   ("materialize in L2 chunks, Gluon", fusedconv.forced_algorithm("materialize"), x),
                                   ("plain Triton: materialize", fusedconv.plain_triton(), x)):
            with context:
                print(f"op {label:40s} {images}: {time_ms(model, [xs]):.3f} ms")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--maxnreg", default="", help="register budgets to time the Gluon passes at too, e.g. 0,112,128")
    p.add_argument("--op-only", action="store_true", help="time the op only (no kernel checks or pass timings)")
    a = p.parse_args()
    failures = 0
    if not a.op_only:
        failures = check(a.arch)
        timing(a.arch, a.batch, [int(c) for c in a.maxnreg.split(",") if c])
    op_timing(a.batch)
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
