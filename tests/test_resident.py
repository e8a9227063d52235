"""The resident algorithm (one launch, one program per (sample, group) holding the whole group)
on CUDA: every resident config and dtype on ragged shapes that fit, the default choosing it for
small problems, and a clear error where a forced resident run cannot hold a group."""
import pytest
import torch

import fusedconv
from helpers import DTYPES, Case, assert_matches, output_size, poison_cuda_allocator, prepared
from fusedconv.triton_kernels import rules

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FITTING_CASES = [
    Case(n=3, c_in=3, c_out=8, h=11, w=13, groups=2),
    Case(n=2, c_in=5, c_out=12, h=14, w=9, kernel=(2, 3), groups=3, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    Case(n=1, c_in=8, c_out=32, h=16, w=16, groups=8),
]


def fits(case, cfg):
    channels, positions = fusedconv.resident_configs()[cfg]
    h_out, w_out = output_size(case)
    return rules.resident_fits(channels, positions, case.c_out // case.groups, h_out * w_out)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", FITTING_CASES, ids=str)
def test_every_resident_config(case, dtype):
    dt = DTYPES[dtype]
    model, x, exp = prepared(case, "cuda", dt)
    ran = 0
    for cfg in fusedconv.resident_configs():
        if not fits(case, cfg):
            with fusedconv.forced_config(cfg), pytest.raises(ValueError, match="resident config"):
                model(x)
            continue
        poison_cuda_allocator(exp.numel() * 8)
        with fusedconv.forced_config(cfg), torch.no_grad():
            assert_matches(model(x), exp, dt)
        ran += 1
    assert ran, "no resident config fits this case"


def test_small_problem_default_matches_every_algorithm():
    """The benchmark's small problem (1x8x32x32 -> 32): the default (resident) gives what the
    tiled algorithms give, within fp32 rounding, and matches the reference."""
    case = Case(n=1, c_in=8, c_out=32, h=32, w=32, groups=8)
    model, x, exp = prepared(case, "cuda", torch.float32)
    with torch.no_grad():
        default = model(x)
        assert_matches(default, exp, torch.float32)
        for algorithm in ("materialize", "recompute", "resident"):
            with fusedconv.forced_algorithm(algorithm):
                torch.testing.assert_close(model(x), default, atol=2e-5, rtol=2e-5)


def test_forced_resident_that_cannot_hold_a_group_is_an_error():
    case = Case(n=1, c_in=2, c_out=8, h=40, w=40, groups=1)  # 8 channels x 1444 positions
    model, x, _ = prepared(case, "cuda", torch.float32)
    with fusedconv.forced_algorithm("resident"), pytest.raises(ValueError, match="resident algorithm needs a group"):
        model(x)


def test_autotune_considers_resident(tmp_path):
    case = Case(n=2, c_in=4, c_out=16, h=20, w=20, groups=4)
    model, x, exp = prepared(case, "cuda", torch.float32)
    fusedconv.autotune(True, str(tmp_path / "tune.tsv"))
    try:
        with torch.no_grad():
            assert_matches(model(x), exp, torch.float32)
    finally:
        fusedconv.autotune(False)
    chosen = [e for e in fusedconv.autotune_entries() if "[2, 4, 20, 20]" in e[0]]
    assert chosen and chosen[0][2] in fusedconv.ALGORITHMS
