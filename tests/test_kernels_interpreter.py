"""Every @triton.jit kernel under TRITON_INTERPRET=1 on small CPU tensors, for every variant the
build ships (config x dtype x precision over both archs, each flavour), against the float64
reference, launched by the one Python launch sequence: the exported file's wrapper
(export_wrapper.py, loaded through fusedconv.export.load with each kernel's autotuner pinned to
one config, which an autotuner with a single config runs untimed). Every buffer it allocates is
NaN-poisoned, so an element no kernel writes shows, and its steps' outputs are checked as they
run. Checks the kernels' index math, masking and statistics and the wrapper's choices without a
GPU; codegen, races and TF32 rounding stay with the CUDA tests. The Gluon FMA conv kernels cannot be
interpreted: the wrapper's sequences around them (the weight packed, recompute as the default,
materialize in chunks of samples) run here with their plain-Triton twins standing in for them."""
import pytest
import torch

from helpers import (DTYPES, Case, assert_matches, expected, forward_args, fused_model, output_size, random_input,
                     reference_model)

pytestmark = pytest.mark.usefixtures("interpreter")

triton = pytest.importorskip("triton")
from triton.runtime.autotuner import Autotuner, Heuristics  # noqa: E402

from fusedconv import export  # noqa: E402
from fusedconv.triton_kernels import rules  # noqa: E402
from fusedconv.triton_kernels import variants as V  # noqa: E402

# Ragged everywhere: output rows and columns not multiples of any tile's, C_out not a multiple
# of BLOCK_C, groups straddling channel blocks, padding, stride, dilation, a rectangular kernel;
# K = 81 and 90, more than the unrolled K steps of any config, so their runtime remainder runs
# too. The unpadded 3 x 3 cases run the kernels' TAPS = 3 flavour (the NCHW ones only with
# column dilation 1, row stride and dilation included), the others TAPS = 0.
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
TILED = ("materialize", "recompute", "channels_last")
# The first config of each table unless a test names another (export.pinned's names).
FIRST = dict(conv=V.CONV_CONFIGS[0].name, group_stats=V.GROUP_STATS_CONFIGS[0].name, apply=V.APPLY_CONFIGS[0].name,
             copy=V.TRANSPOSE_CONFIGS[0].name, pack=V.PACK_CONFIGS[0].name)


def conv_variants():
    """(arch, variant) over every arch's conv variants, each (dtype, precision, config) once."""
    seen = {}
    for arch in (89, 90):
        for v in V.variants(arch):
            if v.kernel == "conv_stats":
                seen.setdefault((v.dtype, v.precision, v.config.name), (arch, v))
    return list(seen.values())


def _partials_and_stats(stats, part_mean, part_m2, *_):
    assert torch.isfinite(part_mean).all() and (part_m2 >= 0).all(), "a tile's partials unwritten, or M2 < 0"
    assert torch.isfinite(stats).all() and (stats[..., 1] > 0).all()


def _values(_, values, *__):
    assert torch.isfinite(values).all(), "materialize left values unwritten"


def _copy(xt, x, _chunks):
    c_in = x.shape[1]
    assert torch.equal(xt[..., :c_in], x.permute(0, 2, 3, 1)) and (xt[..., c_in:] == 0).all()


def _packed(wt, *_):
    assert torch.isfinite(wt).all(), "a packed tap or padding channel unwritten"


# The wrapper's steps and what their outputs must be, checked after each call: check(output, *arguments).
CHECKS = {"_group_stats": _partials_and_stats, "_apply": _values, "_to_channels_last": _copy,
          "_packed_weight": _packed}


def _checked(step, check):
    def run(*args):
        out = step(*args)
        check(out, *args)
        return out
    return run


def _recording(launches, name, run):
    def recorded(*args, **kwargs):
        launches.append((name, kwargs))
        return run(*args, **kwargs)
    return recorded


@pytest.fixture
def wrapper(monkeypatch, fp32_matmul_precision):
    """wrapper(arch, dtype, mode="accurate", checks=True, **configs) -> (module, launches): the
    exported file for `arch` with each kernel pinned to the build's config named in `configs`
    (export.pinned's names; FIRST otherwise; resident: every config, the wrapper picks), fp32 in
    precision `mode`, every buffer NaN, each step checked (CHECKS). `launches` gets (kernel,
    keyword arguments) of each launch as the bare jit function sees it, after the autotuner and
    heuristics have added theirs."""
    def load(arch, dtype, mode="accurate", checks=True, **configs):
        fp32_matmul_precision("high" if mode == "tf32" else "highest")
        module = export.load(arch, export.pinned(dtype, **{**FIRST, **configs}))
        monkeypatch.setattr(module, "_empty", lambda *shape, device, dtype: torch.full(shape, float("nan"),
                                                                                      device=device, dtype=dtype))
        for step, check in CHECKS.items() if checks else ():
            monkeypatch.setattr(module, step, _checked(getattr(module, step), check))
        launches = []
        for name, kernel in list(vars(module).items()):
            if name.endswith("_kernel") and kernel is not None:  # None: the sm_90 file's Gluon kernel names
                while isinstance(kernel, (Autotuner, Heuristics)):
                    kernel = kernel.fn
                monkeypatch.setattr(kernel, "run", _recording(launches, name, kernel.run))
        return module, launches
    return load


def run(module, case, dtype, algorithm):
    """The wrapper's `algorithm` (None: its own choice) on a case, against the reference."""
    dt = DTYPES[dtype]
    ref = reference_model(case)
    model = fused_model(case, ref).to(dt)
    x = random_input(case).to(dt)
    with torch.no_grad():
        out = module.conv_sigmoid_group_norm(*forward_args(model, x), algorithm=algorithm)
    return assert_matches(out, expected(case, x, ref, dt), dt)


def flavours(launches):
    return {(name, kw["TAPS"], kw.get("UNIT")) for name, kw in launches if "TAPS" in kw}


def predicted(case, algorithm, cfg):
    """The conv launches' (kernel, TAPS, UNIT) the rules pick for a case (its tensors are
    contiguous and 16-byte aligned) at a conv config."""
    kh, kw = case.kernel
    if algorithm == "channels_last":
        taps = rules.channels_last_taps(kh, kw, *case.padding)
        unit = rules.channels_last_unit(taps, -(-case.c_in // 8), -(-case.c_out // cfg.meta["BLOCK_C"]), case.c_out,
                                        True, *case.stride, *case.dilation)
        return {("conv_cl_stats_kernel", taps, unit), ("conv_cl_norm_kernel", taps, unit)}
    taps = rules.conv_taps(kh, kw, *case.padding, case.dilation[1], 1)
    return {(name, taps, None) for name in ("conv_stats_kernel", "conv_norm_kernel")[:1 + (algorithm == "recompute")]}


@pytest.mark.parametrize("algorithm", TILED)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("arch_variant", conv_variants(),
                         ids=lambda av: f"{av[1].dtype}-{av[1].precision}-{av[1].config.name}")
def test_conv_variants(wrapper, arch_variant, case, algorithm):
    arch, variant = arch_variant
    module, launches = wrapper(arch, variant.dtype, variant.mode, conv=variant.config.name)
    run(module, case, variant.dtype, algorithm)
    assert flavours(launches) == predicted(case, algorithm, variant.config)
    assert {kw["PRECISION"] for _, kw in launches if "PRECISION" in kw} == {variant.precision}


def test_cases_cover_every_conv_flavour():
    """The rules pick every flavour the build ships for some case above: TAPS 0 and 3 in both
    layouts, and the channels-last UNIT flavour under every config."""
    for algorithm in ("recompute", "channels_last"):
        assert {taps for case in CASES for _, taps, _ in predicted(case, algorithm, V.CONV_CONFIGS[0])} == {0, 3}
    for cfg in V.CONV_CONFIGS:
        assert any(unit for case in CASES for _, _, unit in predicted(case, "channels_last", cfg)), cfg.name


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("copy,pack", list(zip(V.TRANSPOSE_CONFIGS, V.PACK_CONFIGS)), ids=lambda c: c.name)
def test_channels_last_copy_and_pack_configs(wrapper, copy, pack, dtype):
    # Rows longer than one copy block, C_in past one chunk, 25 taps (more than a pack block).
    case = Case(n=1, c_in=11, c_out=8, h=5, w=270, kernel=(5, 5), groups=2, padding=(2, 1))
    module, _ = wrapper(89, dtype, conv=V.CONV_CONFIGS[-1].name, copy=copy.name, pack=pack.name)
    run(module, case, dtype, "channels_last")


@pytest.mark.parametrize("stats_cfg", V.GROUP_STATS_CONFIGS, ids=lambda c: c.name)
def test_group_stats_configs(wrapper, stats_cfg):
    # Many tiles per group, so the merge loops more than once with BLOCK=64.
    module, _ = wrapper(89, "fp32", conv=V.CONV_CONFIGS[-1].name, group_stats=stats_cfg.name)
    run(module, Case(n=1, c_in=2, c_out=8, h=40, w=40, groups=2), "fp32", "recompute")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("apply_cfg", V.APPLY_CONFIGS, ids=lambda c: c.name)
def test_group_norm_apply_configs(wrapper, apply_cfg, dtype):
    # Rows longer than one block, with a ragged last block.
    module, _ = wrapper(89, dtype, conv=V.CONV_CONFIGS[-1].name, apply=apply_cfg.name)
    run(module, Case(n=2, c_in=2, c_out=6, h=33, w=29, groups=3), dtype, "materialize")


def test_group_stats_tiny_variance_next_to_a_large_mean(wrapper):
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
    module, _ = wrapper(89, "fp32", checks=False, group_stats="b64")
    stats = module._group_stats(mean.contiguous(), m2.contiguous(), 1, 1, cpg, h_out, w_out, th_, tw_, 0.0)
    var = vals.var(unbiased=False).item()
    assert abs(stats[0, 0, 0].item() - vals.mean().item()) < 1e-3
    assert stats[0, 0, 1].item() == pytest.approx(var ** -0.5, rel=1e-3)


# (arch, mode) that run each fp32 tl.dot precision.
PRECISIONS = {"ieee": (89, "accurate"), "tf32x3_split": (90, "accurate"), "tf32": (90, "tf32")}


@pytest.mark.parametrize("cfg", [V.CONV_CONFIGS[0], V.CONV_CONFIGS[-1]], ids=lambda c: c.name)
@pytest.mark.parametrize("flavour", [0, 3])
@pytest.mark.parametrize("special", ["inf", "nan"])
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_non_finite_inputs_match_the_reference(wrapper, precision, special, flavour, cfg):
    """x = +-inf makes the conv +-inf, and sigmoid maps that to 0 or 1: the reference stays
    finite, and a precision split that computes inf - inf would make the group NaN. A NaN
    makes its whole (sample, group) NaN through the statistics, in the reference too. The
    materialize sequence at conv config `cfg` (with K_STEPS > 0, the unrolled K steps run;
    with 0, the runtime loop)."""
    case = Case(n=1, c_in=2, c_out=4, h=9, w=9, groups=2)
    ref = reference_model(case)
    model = fused_model(case, ref)
    with torch.no_grad():  # one sign per channel's weights, so no inf - inf inside the conv
        model.conv.weight.abs_()
        ref.conv.weight.copy_(model.conv.weight)
    x = random_input(case)
    x[0, 0, 4, 4] = float(special)
    x[0, 1, 1, 7] = -float(special)
    if flavour == 0:  # x's columns 2 elements apart: the rules pick TAPS = 0
        x = torch.zeros(*x.shape[:3], 2 * x.shape[3])[..., ::2].copy_(x)
    with torch.no_grad():
        exp = ref.double()(x.double())
    assert torch.isfinite(exp).all() == (special == "inf")
    arch, mode = PRECISIONS[precision]
    module, launches = wrapper(arch, "fp32", mode, checks=False, conv=cfg.name, group_stats="b64", apply="b256")
    with torch.no_grad():
        out = module.conv_sigmoid_group_norm(*forward_args(model, x), algorithm="materialize")
    assert flavours(launches) == {("conv_stats_kernel", flavour, None)}
    torch.testing.assert_close(out, exp.float(), atol=1e-4, rtol=1e-4, equal_nan=True)


# Shapes that fit one resident program per (sample, group): ragged positions, padding, stride,
# dilation, a rectangular kernel, one group with a single channel; the unpadded 3 x 3 ones run
# the TAPS = 3 flavour.
RESIDENT_CASES = [
    Case(n=2, c_in=3, c_out=8, h=11, w=13, groups=2),
    Case(n=1, c_in=3, c_out=6, h=13, w=11, groups=3, stride=(2, 1), dilation=(2, 1)),
    Case(n=1, c_in=2, c_out=6, h=9, w=12, kernel=(2, 3), groups=6, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    Case(n=2, c_in=4, c_out=4, h=12, w=10, kernel=(1, 1), groups=1),
]


def fits(case, cfg):
    h_out, w_out = output_size(case)
    return rules.resident_fits(cfg.meta["BLOCK_C"], cfg.meta["BLOCK_M"], case.c_out // case.groups, h_out * w_out)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", RESIDENT_CASES, ids=str)
@pytest.mark.parametrize("cfg", V.RESIDENT_CONFIGS, ids=lambda c: c.name)
def test_resident_kernel(wrapper, cfg, case, dtype):
    if not fits(case, cfg):
        pytest.skip(f"{case} does not fit {cfg.name} (the launcher never picks it)")
    module, launches = wrapper(89, dtype, resident=cfg.name)
    run(module, case, dtype, "resident")
    assert flavours(launches) == {("conv_resident_kernel", rules.conv_taps(*case.kernel, *case.padding,
                                                                            case.dilation[1], 1), None)}


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_default_algorithm_is_the_ops(wrapper, dtype):
    """Without `algorithm` the wrapper chooses as the op does: resident for a small problem,
    at the smallest config that holds a group; where none holds one (16 channels a group),
    default_algorithm's choice. A forced resident run that no config holds is a ValueError."""
    module, launches = wrapper(89, dtype)
    small = Case(n=1, c_in=3, c_out=8, h=11, w=13, groups=2)
    run(module, small, dtype, None)
    smallest = min((c for c in V.RESIDENT_CONFIGS if fits(small, c)),
                   key=lambda c: c.meta["BLOCK_C"] * c.meta["BLOCK_M"])
    assert [(name, kw["BLOCK_M"], kw["BLOCK_C"]) for name, kw in launches] == \
        [("conv_resident_kernel", smallest.meta["BLOCK_M"], smallest.meta["BLOCK_C"])]
    launches.clear()
    wide = Case(n=1, c_in=3, c_out=16, h=7, w=9, groups=1)
    run(module, wide, dtype, None)
    tiled = {"materialize": "conv_stats_kernel", "channels_last": "conv_cl_stats_kernel"}
    assert tiled[rules.default_algorithm("accurate" if dtype == "fp32" else "native", 3)] in {n for n, _ in launches}
    with pytest.raises(ValueError, match="resident algorithm needs a group"):
        run(module, wide, dtype, "resident")


class _TwinForGluon:
    """A Gluon FMA conv kernel's stand-in on the CPU: checks that the wrapper launches it at the
    FMA config over the packed weight (zero past C_out), then runs its plain-Triton twin at the
    same tiles (one output row by BLOCK_W columns by BLOCK_C channels, exact fp32) over the
    weight unpacked, as benchmarks/gluon_fma_check.py compares them on a GPU."""

    def __init__(self, twin, config, launches, name):
        # Past the twin's autotuner (it runs the FMA tiles), not its heuristics (the tile counts).
        self.twin = twin.fn if isinstance(twin, Autotuner) else twin
        self.config, self.launches, self.name, self.arg_names = config, launches, name, twin.arg_names

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            fixed = {k: kwargs.pop(k) for k in self.config.all_kwargs()}
            assert fixed == self.config.all_kwargs(), (self.name, fixed)
            assert "PRECISION" not in kwargs and "TAPS" not in kwargs, self.name
            aligned = kwargs.pop("X_ALIGNED")  # the Gluon flavour: the twin's tiles are the same in both
            self.launches.append((self.name, args[0].shape[0], kwargs.get("STORE_V"), aligned))
            args = list(args)
            wk, c_out, k_total = args[1], args[self.arg_names.index("C_out")], args[self.arg_names.index("K_total")]
            block_c = self.config.kwargs["BLOCK_C"]
            assert wk.shape == (-(-c_out // block_c), k_total, block_c), (self.name, wk.shape)
            rows = wk.transpose(1, 2).reshape(-1, k_total)
            assert (rows[c_out:] == 0).all(), "padding channels not zero"
            args[1] = rows[:c_out].contiguous()
            tile = {k: self.config.kwargs[k] for k in ("BLOCK_H", "BLOCK_W", "BLOCK_C")}
            self.twin[grid](*args, **kwargs, **tile, BLOCK_K=16, K_STEPS=0, TAPS=3, PRECISION="ieee", num_warps=4,
                            num_stages=1)
        return launch


# Where the FMA conv runs: W_out 68 (fma_w64) and 130 (fma_w128, a ragged second column tile),
# C_out past one 32-channel block, 3 and 2 samples; 10 channels a group, which no resident
# config holds (so the default is the tiled one) and which straddle a channel block. W 144, a
# multiple of 16, takes recompute's aligned flavour.
FMA_CASES = [Case(n=3, c_in=3, c_out=40, h=5, w=70, groups=4), Case(n=2, c_in=2, c_out=20, h=4, w=132, groups=2),
             Case(n=2, c_in=2, c_out=20, h=4, w=144, groups=2)]


@pytest.mark.parametrize("chunk", [1, 2, None], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("algorithm", ["materialize", "recompute", None], ids=str)
@pytest.mark.parametrize("case", FMA_CASES, ids=str)
def test_the_wrappers_gluon_fma_sequences_with_the_twins_standing_in(wrapper, monkeypatch, case, algorithm, chunk):
    """The sm_89 file's sequences around the Gluon FMA kernels, which the interpreter cannot run:
    fma_config as on a GPU (the interpreter makes it give none), the Gluon kernels replaced by
    _TwinForGluon, every buffer NaN. The config by W_out; the default algorithm
    fma_conv_algorithm's (recompute); materialize once per chunk of materialize_chunk samples
    (patched to `chunk`: these samples are far below its L2 budget, which keeps them in one),
    each chunk's values normalized by its own groups' statistics."""
    module, launches = wrapper(89, "fp32")
    h_out, w_out = output_size(case)
    name = rules.fma_conv_config(89, "accurate", 3, 1, 1, 1, w_out)
    config = module.FMA_CONV_CONFIGS[name]
    assert rules.materialize_chunk(True, case.n, case.c_out, h_out * w_out) == case.n
    monkeypatch.setattr(module, "fma_config", lambda *args: module.FMA_CONV_CONFIGS[module.fma_conv_config(89, *args)])
    if chunk:
        monkeypatch.setattr(module, "materialize_chunk", lambda fma_conv, n, c_out, hw_out: chunk if fma_conv else n)
    ran = []
    for gluon, twin in (("conv3x3_fma_stats_kernel", "conv_stats_kernel"),
                        ("conv3x3_fma_norm_kernel", "conv_norm_kernel")):
        monkeypatch.setattr(module, gluon, _TwinForGluon(getattr(module, twin), config, ran, gluon))
    run(module, case, "fp32", algorithm)
    if (algorithm or rules.fma_conv_algorithm()) == "recompute":
        # x contiguous, so its strides are multiples of 16 with W; the 128-column tile only
        aligned = case.w % 16 == 0 and config.kwargs["BLOCK_W"] == 128
        assert ran == [("conv3x3_fma_stats_kernel", case.n, False, aligned),
                       ("conv3x3_fma_norm_kernel", case.n, None, aligned)]
    else:
        sizes = [min(chunk or case.n, case.n - n0) for n0 in range(0, case.n, chunk or case.n)]
        assert ran == [("conv3x3_fma_stats_kernel", size, True, False) for size in sizes]
        assert [n for n, _ in launches if n != "conv_stats_kernel"] == \
            ["group_stats_kernel", "group_norm_apply_kernel"] * len(sizes)
    tiles = {(kw["BLOCK_H"], kw["BLOCK_W"], kw["BLOCK_C"]) for n, kw in launches if n.startswith("conv")}
    assert tiles == {(1, config.kwargs["BLOCK_W"], config.kwargs["BLOCK_C"])}


@pytest.mark.parametrize("block_c", [8, 32])
def test_fma_weight_is_packed_per_channel_block(wrapper, block_c):
    """[ceil(C_out / block_c), C_in * 9, block_c], element [b, k, j] the weight of output
    channel b * block_c + j at k, channels past C_out zero; every element written (the buffer
    is NaN from _empty)."""
    module, _ = wrapper(89, "fp32", checks=False)
    weight = torch.randn(20, 3, 3, 3)
    wk = module._fma_weight(weight, block_c)
    blocks = -(-20 // block_c)
    assert wk.shape == (blocks, 27, block_c) and wk.is_contiguous()
    for b in range(blocks):
        for j in range(block_c):
            c = b * block_c + j
            assert torch.equal(wk[b, :, j], weight[c].reshape(-1) if c < 20 else torch.zeros(27)), (b, j)
