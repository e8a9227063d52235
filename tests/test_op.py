"""The op and its module against ../shared/reference.py, on CPU and (when present) CUDA."""
import pytest
import torch

import fusedconv
from helpers import (DTYPES, Case, assert_matches, expected, fused_model,
                     poison_cuda_allocator, random_cases, random_input, reference_model)

CASES = random_cases(14, seed=2026) + [
    Case(),                                                  # the defaults: 3x3, 4 groups
    Case(n=1, c_in=8, c_out=32, h=64, w=64, groups=8),       # the benchmark's channels
    Case(n=2, c_in=2, c_out=40, h=41, w=37, groups=5, padding=(1, 1)),  # ragged everything
    Case(n=1, c_in=4, c_out=16, h=9, w=9, kernel=(1, 1), groups=16),    # 1x1, one channel a group
    Case(n=1, c_in=3, c_out=6, h=12, w=10, kernel=(5, 5), groups=1, padding=(2, 2)),
]


def run_case(case, dtype, device):
    ref = reference_model(case)
    model = fused_model(case, ref).to(device, dtype)
    x = random_input(case).to(device, dtype)
    poison_cuda_allocator(case.n * case.c_out * case.h * case.w * 4 * 4)
    with torch.no_grad():
        out = model(x)
    assert out.dtype == dtype and out.device.type == device
    assert out.is_contiguous()
    return assert_matches(out, expected(case, x.cpu(), ref, dtype), dtype)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(case, dtype, device):
    run_case(case, DTYPES[dtype], device)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_model_new_benchmark_shape_small_batch(dtype, device):
    """ModelNew with the reference's constructor signature and default sizes."""
    ref_mod_inputs = [8, 32, 3, 8, (32, 1, 1), (32, 1, 1)]
    case = Case(n=2, c_in=8, c_out=32, h=64, w=64, groups=8)
    ref = reference_model(case)
    model = fusedconv.ModelNew(*ref_mod_inputs)
    model.load_state_dict(ref.state_dict())
    model = model.to(device, DTYPES[dtype])
    x = random_input(case).to(device, DTYPES[dtype])
    with torch.no_grad():
        out = model(x)
    assert_matches(out, expected(case, x.cpu(), ref, DTYPES[dtype]), DTYPES[dtype])


def test_optional_arguments_none(device):
    """conv_bias, gn_weight and gn_bias may be None: no conv bias, identity affine."""
    case = Case(n=2, c_in=3, c_out=12, h=10, w=9, groups=3)
    x = random_input(case).to(device)
    w = torch.randn(12, 3, 3, 3).to(device)
    bias, scale = torch.randn(12, 1, 1).to(device), torch.randn(12).to(device)
    out = fusedconv.forward(x, w, None, bias, scale, None, None, 3)
    z = torch.sigmoid((torch.nn.functional.conv2d(x.double(), w.double()) + bias.double().view(1, -1, 1, 1))
                      * scale.double().view(1, -1, 1, 1))
    exp = torch.nn.functional.group_norm(z, 3, eps=1e-5).cpu()
    assert_matches(out, exp, torch.float32)


def test_eps_reaches_the_normalization(device):
    """A large eps changes the result exactly as GroupNorm's does."""
    case = Case(n=1, c_in=2, c_out=4, h=8, w=8, groups=2)
    ref = reference_model(case)
    ref.group_norm.eps = 0.5
    model = fused_model(case, ref).to(device)
    model.group_norm.eps = 0.5
    x = random_input(case).to(device)
    with torch.no_grad():
        out = model(x)
        exp = ref.double()(x.cpu().double())
    assert_matches(out, exp, torch.float32)


def test_empty_batch(device):
    x = torch.rand(0, 3, 10, 10, device=device)
    w = torch.randn(8, 3, 3, 3, device=device)
    b = torch.randn(8, device=device)
    out = fusedconv.forward(x, w, b, b, b, b, b, 4)
    assert out.shape == (0, 8, 8, 8) and out.device.type == device


def test_non_contiguous_and_channels_last_input(device):
    case = Case(n=2, c_in=4, c_out=8, h=15, w=14, groups=2, padding=(1, 1))
    ref = reference_model(case)
    model = fused_model(case, ref).to(device)
    big = torch.rand(3, 6, 20, 30).to(device)
    x_slice = big[1:, 1:5, 2:17, 3:31:2]  # storage offset, strided width
    assert not x_slice.is_contiguous()
    x_cl = random_input(case).to(device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for x in (x_slice, x_cl):
            assert_matches(model(x), expected(case, x.cpu().contiguous(), ref, torch.float32), torch.float32)
