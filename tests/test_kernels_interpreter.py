"""Every bare @triton.jit kernel under TRITON_INTERPRET=1 on small CPU tensors, for every
variant the build ships (config x dtype x precision over both archs), against the float64
reference. Checks the kernels' index math, masking and statistics without a GPU; codegen,
races and TF32 rounding stay with the CUDA tests."""
import os

import pytest
import torch

from helpers import Case, assert_matches, expected, fused_model, output_size, random_input, reference_model

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="TRITON_INTERPRET=1 must be set before Triton is imported")

triton = pytest.importorskip("triton")
from fusedconv.triton_kernels import conv_sigmoid_groupnorm as K  # noqa: E402
from fusedconv.triton_kernels import variants as V  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter_fixes(monkeypatch):
    """Two Triton 3.6 interpreter bugs, mended here so the kernels can be tested as written.

    1. It turns a scalar into an int with int(np.array([v])), which NumPy >= 2.4 refuses, so
       any range() over a runtime bound fails; read the one element instead.
    2. It hands bf16 operands to np.matmul as their raw 16-bit patterns
    (numpy has no bf16), so every bf16 tl.dot comes out as garbage. Widen them to the fp32
    values they encode first (exact: bf16 is fp32's top half), as the GPU's MMA does."""
    import numpy as np
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_dot

    def widen(h):
        if h.dtype.scalar == triton.language.bfloat16:
            bits = h.data.astype(np.uint16).astype(np.uint32) << 16
            return interpreter.TensorHandle(bits.view(np.float32), triton.language.float32)
        return h

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)

    patch_tensor = interpreter._patch_lang_tensor

    def patch_tensor_with_scalar_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", patch_tensor_with_scalar_index)


TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Ragged everywhere: output rows and columns not multiples of any tile's, C_out not a multiple
# of BLOCK_C, groups straddling channel blocks, padding, stride, dilation, a rectangular kernel;
# K = 81 and 90, more than the unrolled K steps of any config, so their runtime remainder runs
# too. The unpadded 3 x 3 cases with column dilation 1 run the kernels' TAPS = 3 flavour
# (row stride and dilation included), the others TAPS = 0.
CASES = [
    Case(n=2, c_in=3, c_out=20, h=19, w=21, kernel=(3, 2), groups=4, stride=(1, 2), padding=(1, 0), dilation=(1, 2)),
    Case(n=1, c_in=5, c_out=6, h=9, w=7, kernel=(1, 1), groups=6),
    Case(n=1, c_in=10, c_out=33, h=4, w=131, groups=3, padding=(1, 1)),
    Case(n=2, c_in=9, c_out=20, h=5, w=133, groups=4),
    Case(n=1, c_in=3, c_out=8, h=15, w=17, groups=2, stride=(2, 2), dilation=(2, 1)),
    Case(n=1, c_in=3, c_out=8, h=15, w=17, groups=2, stride=(2, 1), dilation=(1, 2)),
    # The channels-last unit flavour's facts (one chunk, unit stride and dilation, C_out % 16
    # == 0, one channel block in every config), with a ragged last column tile.
    Case(n=2, c_in=7, c_out=16, h=6, w=133, groups=4),
]


def taps(case):
    """The conv kernels' flavour the runtime picks for a case (csrc/forward_cuda.cpp; the
    inputs here are contiguous, so x's columns are adjacent)."""
    return 3 if case.kernel == (3, 3) and case.padding == (0, 0) and case.dilation[1] == 1 else 0


def cl_taps(case):
    """The channels-last conv kernels' flavour: TAPS = 3 needs only an unpadded 3 x 3 kernel
    (the workspace is theirs, so x's own strides do not matter)."""
    return 3 if case.kernel == (3, 3) and case.padding == (0, 0) else 0


def cl_unit(case, conv_cfg):
    """Whether the runtime picks the channels-last unit flavour (csrc/forward_cuda.cpp; the
    tests' tensors are all 16-byte aligned)."""
    return (cl_taps(case) == 3 and case.c_in <= 8 and case.stride == (1, 1) and case.dilation == (1, 1)
            and case.c_out % 16 == 0 and case.c_out <= conv_cfg.meta["BLOCK_C"])


def tiling(cfg, h_out, w_out):
    """(tile rows, tile columns) of a conv config on an output size."""
    return -(-h_out // cfg.meta["BLOCK_H"]), -(-w_out // cfg.meta["BLOCK_W"])


def conv_variants():
    """(dtype, precision, config) over every arch's conv variants, each once."""
    seen = {}
    for arch in (89, 90):
        for v in V.variants(arch):
            if v.kernel == "conv_stats":
                seen[(v.dtype, v.precision, v.config.name)] = v
    return list(seen.values())


def setup(case, dtype_name):
    """dtype, reference model, fused model and input in that dtype, flat weight, output size."""
    dtype = TORCH_DTYPES[dtype_name]
    ref = reference_model(case)
    model = fused_model(case, ref).to(dtype)
    x = random_input(case).to(dtype)
    w = model.conv.weight.detach().reshape(case.c_out, -1).contiguous()
    h_out, w_out = output_size(case)
    return dtype, ref, model, x, w, h_out, w_out


def run_pipeline(case, dtype_name, precision, conv_cfg, stats_cfg, algorithm, apply_cfg=V.APPLY_CONFIGS[0]):
    """The launches the C++ runtime makes for `algorithm`, on poisoned buffers."""
    if algorithm == "channels_last":
        return run_channels_last(case, dtype_name, precision, conv_cfg, stats_cfg)
    dtype, ref, model, x, w, h_out, w_out = setup(case, dtype_name)
    conv, gn = model.conv, model.group_norm
    c_out, g = case.c_out, case.groups
    hw = h_out * w_out
    th, tw = tiling(conv_cfg, h_out, w_out)
    tiles, cblocks = th * tw, -(-c_out // conv_cfg.meta["BLOCK_C"])
    nan = float("nan")
    part_mean = torch.full((case.n, c_out, tiles), nan)
    part_m2 = torch.full((case.n, c_out, tiles), nan)
    stats = torch.full((case.n, g, 2), nan)
    values = torch.full((case.n, c_out, h_out, w_out), nan)
    y = torch.full((case.n, c_out, h_out, w_out), nan, dtype=dtype)
    geometry = (c_out, case.h, case.w, h_out, w_out, *case.kernel, w.shape[1], *x.stride(),
                *case.stride, *case.padding, *case.dilation, th, tw, cblocks, 1)
    meta = dict(conv_cfg.meta, PRECISION=precision, TAPS=taps(case))
    p = lambda t: t.detach().reshape(-1)  # noqa: E731
    store = algorithm == "materialize"
    K.conv_stats_kernel[(case.n * tiles * cblocks,)](
        x, w, p(conv.bias), p(model.bias), p(model.scale), part_mean, part_m2, values, *geometry,
        STORE_V=store, **meta)
    assert torch.isfinite(part_mean).all() and (part_m2 >= 0).all()
    assert torch.isfinite(values).all() == store, "values written exactly when STORE_V"
    K.group_stats_kernel[(case.n * g,)](part_mean, part_m2, stats, c_out // g, h_out, w_out, th, tw,
                                        conv_cfg.meta["BLOCK_H"], conv_cfg.meta["BLOCK_W"],
                                        gn.eps, **stats_cfg.meta)
    assert torch.isfinite(stats).all() and (stats[..., 1] > 0).all()
    if store:
        blocks = -(-hw // apply_cfg.meta["BLOCK"])
        K.group_norm_apply_kernel[(case.n * c_out * blocks,)](
            values, stats, p(gn.weight), p(gn.bias), y, c_out, hw, g, c_out // g, blocks, 1, 1,
            **apply_cfg.meta)
    else:
        K.conv_norm_kernel[(case.n * tiles * cblocks,)](
            x, w, p(conv.bias), p(model.bias), p(model.scale), p(gn.weight), p(gn.bias), stats, y,
            *geometry, g, c_out // g, 1, 1, **meta)
    return assert_matches(y, expected(case, x, ref, dtype), dtype)


def run_channels_last(case, dtype_name, precision, conv_cfg, stats_cfg,
                      tcfg=V.TRANSPOSE_CONFIGS[0], pcfg=V.PACK_CONFIGS[0]):
    """The channels-last sequence: copy x and pack the weight (into NaN-poisoned workspaces, so
    an unwritten padding channel or tap shows), conv + statistics, merge, conv + normalize.
    `conv_cfg` names the config; the channels-last kernels' sizes of that name run."""
    conv_cfg = next(c for c in V.KERNELS["conv_cl_stats"].configs_for(dtype_name) if c.name == conv_cfg.name)
    dtype, ref, model, x, w, h_out, w_out = setup(case, dtype_name)
    conv, gn = model.conv, model.group_norm
    c_out, g = case.c_out, case.groups
    chunks, taps_ = -(-case.c_in // 8), case.kernel[0] * case.kernel[1]
    tp = taps_ + taps_ % 2
    nan = float("nan")
    xt = torch.full((case.n, case.h, case.w, 8 * chunks), nan, dtype=dtype)
    wk = torch.full((c_out, chunks, tp, 8), nan, dtype=dtype)
    w_blocks = -(-case.w // tcfg.meta["BLOCK"])
    K.to_channels_last_kernel[(case.n * case.h * w_blocks,)](
        x, xt, case.c_in, case.h, case.w, *x.stride(), chunks, w_blocks, **tcfg.meta)
    assert torch.equal(xt[..., :case.c_in], x.permute(0, 2, 3, 1)) and (xt[..., case.c_in:] == 0).all()
    K.pack_weight_kernel[(c_out * chunks,)](w, wk, case.c_in, taps_, tp, chunks, **pcfg.meta)
    assert torch.isfinite(wk).all()
    th, tw = tiling(conv_cfg, h_out, w_out)
    tiles, cblocks = th * tw, -(-c_out // conv_cfg.meta["BLOCK_C"])
    part_mean = torch.full((case.n, c_out, tiles), nan)
    part_m2 = torch.full((case.n, c_out, tiles), nan)
    stats = torch.full((case.n, g, 2), nan)
    y = torch.full((case.n, c_out, h_out, w_out), nan, dtype=dtype)
    geometry = (c_out, case.h, case.w, h_out, w_out, *case.kernel, chunks,
                *case.stride, *case.padding, *case.dilation, th, tw, cblocks, 1)
    meta = dict(conv_cfg.meta, PRECISION=precision, TAPS=cl_taps(case), UNIT=cl_unit(case, conv_cfg))
    p = lambda t: t.detach().reshape(-1)  # noqa: E731
    K.conv_cl_stats_kernel[(case.n * tiles * cblocks,)](
        xt, wk, p(conv.bias), p(model.bias), p(model.scale), part_mean, part_m2, *geometry, **meta)
    assert torch.isfinite(part_mean).all() and (part_m2 >= 0).all()
    K.group_stats_kernel[(case.n * g,)](part_mean, part_m2, stats, c_out // g, h_out, w_out, th, tw,
                                        conv_cfg.meta["BLOCK_H"], conv_cfg.meta["BLOCK_W"],
                                        gn.eps, **stats_cfg.meta)
    K.conv_cl_norm_kernel[(case.n * tiles * cblocks,)](
        xt, wk, p(conv.bias), p(model.bias), p(model.scale), p(gn.weight), p(gn.bias), stats, y,
        *geometry, g, c_out // g, 1, 1, **meta)
    return assert_matches(y, expected(case, x, ref, dtype), dtype)


@pytest.mark.parametrize("algorithm", ["materialize", "recompute", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("variant", conv_variants(), ids=lambda v: f"{v.dtype}-{v.precision}-{v.config.name}")
def test_conv_variants(case, variant, algorithm):
    run_pipeline(case, variant.dtype, variant.precision, variant.config, V.GROUP_STATS_CONFIGS[0], algorithm)


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("tcfg,pcfg", list(zip(V.TRANSPOSE_CONFIGS, V.PACK_CONFIGS)), ids=lambda c: c.name)
def test_channels_last_copy_and_pack_configs(tcfg, pcfg, dtype):
    # Rows longer than one copy block, C_in past one chunk, 25 taps (more than a pack block).
    case = Case(n=1, c_in=11, c_out=8, h=5, w=270, kernel=(5, 5), groups=2, padding=(2, 1))
    run_channels_last(case, dtype, "ieee" if dtype == "fp32" else "tf32", V.CONV_CONFIGS[-1],
                      V.GROUP_STATS_CONFIGS[0], tcfg, pcfg)


@pytest.mark.parametrize("stats_cfg", V.GROUP_STATS_CONFIGS, ids=lambda c: c.name)
def test_group_stats_configs(stats_cfg):
    # Many tiles per group, so the merge loops more than once with BLOCK=64.
    case = Case(n=1, c_in=2, c_out=8, h=40, w=40, groups=2)
    run_pipeline(case, "fp32", "ieee", V.CONV_CONFIGS[-1], stats_cfg, "recompute")


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("apply_cfg", V.APPLY_CONFIGS, ids=lambda c: c.name)
def test_group_norm_apply_configs(apply_cfg, dtype):
    # Rows longer than one block, with a ragged last block.
    case = Case(n=2, c_in=2, c_out=6, h=33, w=29, groups=3)
    run_pipeline(case, dtype, "ieee" if dtype == "fp32" else "tf32", V.CONV_CONFIGS[-1],
                 V.GROUP_STATS_CONFIGS[0], "materialize", apply_cfg)


def test_group_stats_tiny_variance_next_to_a_large_mean():
    """Chan's merge stays exact where sum(v^2) - sum(v)^2/n would cancel: 1000 + tiny noise,
    over 2 x 4 tiles of 4 x 16 positions whose last row and column of tiles are ragged."""
    torch.manual_seed(0)
    h_out, w_out, th_, tw_, cpg = 7, 61, 4, 16, 3
    num_th, num_tw = -(-h_out // th_), -(-w_out // tw_)
    vals = 1000.0 + 1e-3 * torch.randn(1, cpg, h_out, w_out, dtype=torch.float64)
    chunks = [vals[..., i * th_:(i + 1) * th_, j * tw_:(j + 1) * tw_].reshape(1, cpg, -1)
              for i in range(num_th) for j in range(num_tw)]
    mean = torch.stack([c.mean(-1) for c in chunks], -1).float()
    m2 = torch.stack([((c - c.mean(-1, keepdim=True)) ** 2).sum(-1) for c in chunks], -1).float()
    stats = torch.full((1, 1, 2), float("nan"))
    K.group_stats_kernel[(1,)](mean.contiguous(), m2.contiguous(), stats, cpg, h_out, w_out, num_th, num_tw,
                               th_, tw_, 0.0, BLOCK=64)
    var = vals.var(unbiased=False).item()
    assert abs(stats[0, 0, 0].item() - vals.mean().item()) < 1e-3
    assert stats[0, 0, 1].item() == pytest.approx(var ** -0.5, rel=1e-3)


@pytest.mark.parametrize("cfg", [V.CONV_CONFIGS[0], V.CONV_CONFIGS[-1]], ids=lambda c: c.name)
@pytest.mark.parametrize("flavour", [0, 3])
@pytest.mark.parametrize("special", ["inf", "nan"])
@pytest.mark.parametrize("precision", ["ieee", "tf32x3_split", "tf32"])
def test_non_finite_inputs_match_the_reference(precision, special, flavour, cfg):
    """x = +-inf makes the conv +-inf, and sigmoid maps that to 0 or 1: the reference stays
    finite, and a precision split that computes inf - inf would make the group NaN. A NaN
    makes its whole (sample, group) NaN through the statistics, in the reference too."""
    case = Case(n=1, c_in=2, c_out=4, h=9, w=9, groups=2)
    ref = reference_model(case)
    model = fused_model(case, ref)
    with torch.no_grad():  # one sign per channel's weights, so no inf - inf inside the conv
        model.conv.weight.abs_()
        ref.conv.weight.copy_(model.conv.weight)
    x = random_input(case)
    x[0, 0, 4, 4] = float(special)
    x[0, 1, 1, 7] = -float(special)
    with torch.no_grad():
        exp = ref.double()(x.double())
    assert torch.isfinite(exp).all() == (special == "inf")
    out = run_conv_only(model, x, case, precision, flavour, cfg)
    torch.testing.assert_close(out, exp.float(), atol=1e-4, rtol=1e-4, equal_nan=True)


def run_conv_only(model, x, case, precision, flavour, cfg):
    """The materialize pipeline for fp32 at conv config `cfg` (with K_STEPS > 0, the unrolled
    K steps run; with 0, the runtime loop), with the conv kernels' TAPS = `flavour`."""
    conv, gn = model.conv, model.group_norm
    w = conv.weight.detach().reshape(case.c_out, -1).contiguous()
    h_out, w_out = case.h - case.kernel[0] + 1, case.w - case.kernel[1] + 1
    hw, g = h_out * w_out, case.groups
    th, tw = tiling(cfg, h_out, w_out)
    tiles, cblocks = th * tw, -(-case.c_out // cfg.meta["BLOCK_C"])
    part = [torch.full((case.n, case.c_out, tiles), float("nan")) for _ in range(2)]
    stats = torch.full((case.n, g, 2), float("nan"))
    y = torch.full((case.n, case.c_out, h_out, w_out), float("nan"))
    p = lambda t: t.detach().reshape(-1)  # noqa: E731
    K.conv_stats_kernel[(case.n * tiles * cblocks,)](
        x, w, p(conv.bias), p(model.bias), p(model.scale), *part, y,
        case.c_out, case.h, case.w, h_out, w_out, *case.kernel, w.shape[1], *x.stride(), 1, 1, 0, 0, 1, 1,
        th, tw, cblocks, 1, STORE_V=True, PRECISION=precision, TAPS=flavour, **cfg.meta)
    K.group_stats_kernel[(case.n * g,)](*part, stats, case.c_out // g, h_out, w_out, th, tw,
                                        cfg.meta["BLOCK_H"], cfg.meta["BLOCK_W"], gn.eps, BLOCK=64)
    blocks = -(-hw // 256)
    K.group_norm_apply_kernel[(case.n * case.c_out * blocks,)](
        y, stats, p(gn.weight), p(gn.bias), y, case.c_out, hw, g, case.c_out // g, blocks, 1, 1, BLOCK=256)
    return y


# Shapes that fit one resident program per (sample, group): ragged positions, padding, stride,
# dilation, a rectangular kernel, one group with a single channel; the unpadded 3 x 3 ones run
# the TAPS = 3 flavour.
RESIDENT_CASES = [
    Case(n=2, c_in=3, c_out=8, h=11, w=13, groups=2),
    Case(n=1, c_in=3, c_out=6, h=13, w=11, groups=3, stride=(2, 1), dilation=(2, 1)),
    Case(n=1, c_in=2, c_out=6, h=9, w=12, kernel=(2, 3), groups=6, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    Case(n=2, c_in=4, c_out=4, h=12, w=10, kernel=(1, 1), groups=1),
]


def run_resident(case, dtype_name, cfg):
    dtype, ref, model, x, w, h_out, w_out = setup(case, dtype_name)
    conv, gn = model.conv, model.group_norm
    cpg = case.c_out // case.groups
    if cpg > cfg.meta["BLOCK_C"] or h_out * w_out > cfg.meta["BLOCK_M"]:
        pytest.skip(f"{case} does not fit {cfg.name} (the launcher never picks it)")
    y = torch.full((case.n, case.c_out, h_out, w_out), float("nan"), dtype=dtype)
    p = lambda t: t.detach().reshape(-1)  # noqa: E731
    K.conv_resident_kernel[(case.n * case.groups,)](
        x, w, p(conv.bias), p(model.bias), p(model.scale), p(gn.weight), p(gn.bias), y,
        case.c_out, case.h, case.w, w_out, h_out * w_out, *case.kernel, w.shape[1], *x.stride(),
        *case.stride, *case.padding, *case.dilation, 1, case.groups, cpg, 1, 1, gn.eps, TAPS=taps(case),
        **cfg.meta)
    return assert_matches(y, expected(case, x, ref, dtype), dtype)


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("case", RESIDENT_CASES, ids=str)
@pytest.mark.parametrize("cfg", V.RESIDENT_CONFIGS, ids=lambda c: c.name)
def test_resident_kernel(cfg, case, dtype):
    run_resident(case, dtype, cfg)
