"""The Gluon FMA conv (triton_kernels/conv_fma_gluon.py) inside the op: it runs where
rules.fma_conv_config says (exact fp32 on sm_89 images, the unpadded 3 x 3 kernel at unit
stride), recompute is then the default (rules.fma_conv_algorithm) and materialize runs in
L2-sized chunks (rules.materialize_chunk), both match float64 and the plain-Triton twins, and
fusedconv.plain_triton() selects the twins (with the plain default, materialize). The kernels run
only on sm_89 images, so on a newer GPU without FUSEDCONV_FORCE_PTX=89 the in-process tests
skip and one test runs this file again in a process that forces the sm_89 PTX."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedconv
from fusedconv.triton_kernels import rules
from helpers import Case, assert_matches, forward_args, fresh_env, prepared

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_sm89_images():
    return torch.cuda.is_available() and torch.ops.fusedconv._device_images(torch.cuda.current_device()).startswith(
        "sm_89")


sm89_only = pytest.mark.skipif(not on_sm89_images(), reason="the Gluon FMA conv runs on sm_89 images only (the "
                               "native suite runs this file under FUSEDCONV_FORCE_PTX=89, test_forced_sm89_ptx)")

# Every branch of the kernels: one tile and two (W_out 256, 130: the last tile shifted left),
# the 64-wide config (W_out 64, 98), C_out below and past one 32-channel block, C_in 1 and 16;
# then W a multiple of 16, where recompute at the 128-column tile takes the aligned flavour
# (rules.fma_x_aligned): the benchmark's width, a last tile running past W (W 144), and the
# 64-wide config, which keeps the first flavour (W 80).
CASES = [
    Case(n=2, c_in=8, c_out=32, h=12, w=258, groups=8),
    Case(n=2, c_in=5, c_out=20, h=9, w=132, groups=4),
    Case(n=3, c_in=3, c_out=40, h=7, w=66, groups=8),
    Case(n=1, c_in=16, c_out=64, h=6, w=200, groups=16),
    Case(n=2, c_in=1, c_out=8, h=5, w=100, groups=2),
    Case(n=2, c_in=8, c_out=32, h=10, w=256, groups=8),
    Case(n=2, c_in=5, c_out=20, h=9, w=144, groups=4),
    Case(n=3, c_in=3, c_out=40, h=7, w=80, groups=8),
]


def fp32_op(case):
    """(module, input, float64 expectation) of a case in fp32 on the GPU."""
    return prepared(case, "cuda")


def float64_forward(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, groups, eps, *_):
    """The op's arguments (unpadded, unit stride) computed in float64 on the CPU."""
    d = lambda t: None if t is None else t.detach().double().cpu()  # noqa: E731
    z = torch.nn.functional.conv2d(d(x), d(weight), d(conv_bias))
    z = torch.sigmoid((z + d(bias).reshape(-1, 1, 1)) * d(scale).reshape(-1, 1, 1))
    return torch.nn.functional.group_norm(z, groups, d(gn_weight), d(gn_bias), eps)


def kernels_launched(fn):
    """Names of the GPU kernels one call of `fn` launches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}


@sm89_only
def test_fma_kernels_run_by_default_and_the_switch_selects_the_twins():
    """Accurate fp32 on sm_89 images recomputes with both Gluon passes; plain_triton() runs
    the plain conv kernel and its default, materialize, instead. A forced plain config keeps
    the plain default too."""
    model, x, exp = fp32_op(CASES[0])
    with torch.no_grad():
        names = kernels_launched(lambda: model(x))
        assert {"conv3x3_fma_stats_kernel", "group_stats_kernel", "conv3x3_fma_norm_kernel"} <= names, names
        assert not {"conv_stats_kernel", "group_norm_apply_kernel"} & names, names
        with fusedconv.forced_config("row_c32_k5"):
            forced = kernels_launched(lambda: model(x))
        assert {"conv_stats_kernel", "group_norm_apply_kernel"} <= forced, forced
        with fusedconv.plain_triton():
            plain = kernels_launched(lambda: model(x))
        assert not any("fma" in n for n in plain), plain
        assert {"conv_stats_kernel", "group_norm_apply_kernel"} <= plain, plain
        assert_matches(model(x), exp, torch.float32)


@sm89_only
def test_materialize_in_l2_sized_chunks_matches_the_whole_batch():
    """9 samples of 32 x 254 x 254 fp32 values (8.3 MB each) run as chunks of 4, 4 and 1
    (rules.materialize_chunk): every sample normalized by its own groups, no sample skipped."""
    case = Case(n=9, c_in=8, c_out=32, h=256, w=256, groups=8)
    assert rules.materialize_chunk(True, case.n, case.c_out, 254 * 254) == 4
    model, x, exp = fp32_op(case)
    with torch.no_grad(), fusedconv.forced_algorithm("materialize"):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            out = model(x)
            torch.cuda.synchronize()
        launches = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                    and e.name == "conv3x3_fma_stats_kernel"]
        assert len(launches) == 3, launches
        with fusedconv.plain_triton():
            twin = model(x)
    assert_matches(out, exp, torch.float32)
    assert (out - twin).abs().max().item() <= 1e-5


@sm89_only
@pytest.mark.parametrize("algorithm", ["materialize", "recompute"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fma_matches_float64_and_its_twin(case, algorithm):
    model, x, exp = fp32_op(case)
    with torch.no_grad(), fusedconv.forced_algorithm(algorithm):
        names = kernels_launched(lambda: model(x))
        assert "conv3x3_fma_stats_kernel" in names, names
        out = model(x)
        with fusedconv.plain_triton():
            twin = model(x)
    assert_matches(out, exp, torch.float32)
    assert_matches(twin, exp, torch.float32)
    assert (out - twin).abs().max().item() <= 1e-5


@sm89_only
@pytest.mark.parametrize("aligned", [False, True], ids=["window", "aligned_window"])
@pytest.mark.parametrize("config", ["fma_w128", "fma_w64"])
def test_each_fma_config_on_a_strided_input(config, aligned):
    """Either config forced, x a window of a larger tensor (its own batch, channel and row
    strides and an offset; aligned: all multiples of 16, where fma_w128 takes recompute's aligned
    flavour), no conv
    bias or GroupNorm affine parameters (masked-off loads)."""
    case = Case(n=2, c_in=4, c_out=24, h=9, w=144 if aligned else 140, groups=6)
    model, _, _ = fp32_op(case)
    pad, left = (32, 16) if aligned else (7, 4)
    big = torch.randn(case.n, case.c_in + 2, case.h + 3, case.w + pad, device="cuda")
    x = big[:, 1:case.c_in + 1, 2:case.h + 2, left:case.w + left]
    assert rules.fma_x_aligned(128, x.data_ptr(), case.w, *x.stride()[:3]) == aligned
    args = list(forward_args(model, x))
    args[2] = args[5] = args[6] = None
    with torch.no_grad():
        with fusedconv.forced_config(config):
            out = torch.ops.fusedconv.forward(*args)
        with fusedconv.plain_triton():
            twin = torch.ops.fusedconv.forward(*args)
        exp = float64_forward(*args)
    assert_matches(out, exp, torch.float32)
    assert (out - twin).abs().max().item() <= 1e-5


def test_a_forced_fma_config_where_it_cannot_run_is_a_value_error():
    """Padded, too narrow for the tile, the channels-last algorithm, or not on sm_89 images."""
    padded = Case(n=1, c_in=3, c_out=8, h=8, w=140, groups=2, padding=(1, 1))
    narrow = Case(n=1, c_in=3, c_out=8, h=8, w=100, groups=2)
    wide = Case(n=1, c_in=3, c_out=8, h=8, w=140, groups=2)
    calls = [(padded, "fma_w64", ""), (narrow, "fma_w128", ""), (wide, "fma_w64", "channels_last")]
    if not on_sm89_images():
        calls.append((wide, "fma_w64", ""))
    for case, config, algorithm in calls:
        model, x, _ = fp32_op(case)
        with torch.no_grad(), fusedconv.forced_config(config), fusedconv.forced_algorithm(algorithm):
            with pytest.raises(ValueError, match="Gluon FMA conv"):
                model(x)


@pytest.mark.skipif(not torch.cuda.is_available() or on_sm89_images() or torch.cuda.get_device_capability() < (8, 9),
                    reason="runs where the sm_89 tests above skip: a GPU newer than sm_89 on its own images")
def test_forced_sm89_ptx():
    """This file again, in a process that runs the sm_89 PTX (as the forced-PTX suite does)."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-p", "no:cacheprovider",
                        str(Path(__file__)), "-k", "not test_forced_sm89_ptx"],
                       capture_output=True, text=True, env=fresh_env(tests_on_path=True, FUSEDCONV_FORCE_PTX="89"),
                       cwd=Path(__file__).resolve().parent)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
