"""Numerics at the edges: saturated (constant) groups, large inputs, groups whose variance is
tiny next to their mean. Against the reference in float64 on the op's rounded inputs, with the
contract's tolerance, on CPU and CUDA (both algorithms), every dtype. NaN and Inf in x:
tests/test_cuda.py."""
import contextlib
import copy

import pytest
import torch

import fusedconv
from helpers import (DTYPES, Case, algorithms_for, assert_matches, expected, fused_model, poison_cuda_allocator,
                     random_input, reference_model)

CASE = Case(n=2, c_in=3, c_out=16, h=21, w=19, groups=4, padding=(1, 1))


def outputs(model, x, device):
    """The op's output under each algorithm the device has."""
    for algorithm in (algorithms_for(model, x) if device == "cuda" else ("",)):
        poison_cuda_allocator(x.shape[0] * model.conv.out_channels * x.shape[2] * x.shape[3] * 8)
        forced = fusedconv.forced_algorithm(algorithm) if algorithm else contextlib.nullcontext()
        with forced, torch.no_grad():
            yield model(x)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_saturated_groups(dtype, device):
    """Group 0: scale 0, so every value is sigmoid(0) = 0.5. Group 1: a bias so large that
    sigmoid rounds to exactly 1.0. Both have variance 0: the output is gn_bias, never NaN
    (0 * rstd with rstd = 1/sqrt(eps), not 0/0)."""
    dt = DTYPES[dtype]
    ref = reference_model(CASE)
    per_group = CASE.c_out // CASE.groups
    with torch.no_grad():
        ref.scale[:per_group] = 0
        ref.bias[per_group:2 * per_group] = 100.0
        ref.scale[per_group:2 * per_group] = ref.scale[per_group:2 * per_group].abs() + 1
    model = fused_model(CASE, ref).to(device, dt)
    x = random_input(CASE).to(device, dt)
    exp = expected(CASE, x.cpu(), ref, dt)
    beta = ref.group_norm.bias.to(dt).double()[:2 * per_group].view(1, -1, 1, 1)
    assert torch.equal(exp[:, :2 * per_group], beta.expand_as(exp[:, :2 * per_group]))  # the setup
    for out in outputs(model, x, device):
        assert_matches(out, exp, dt)  # includes: no NaN anywhere


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_large_inputs(dtype, device):
    """x scaled by 1e3: conv values in the hundreds, sigmoid saturated to exactly 0 or 1 at most
    positions (exp overflows to inf there: 1 / (1 + inf) must give 0, not NaN)."""
    dt = DTYPES[dtype]
    ref = reference_model(CASE)
    model = fused_model(CASE, ref).to(device, dt)
    x = (random_input(CASE) * 1e3).to(device, dt)
    exp = expected(CASE, x.cpu(), ref, dt)
    for out in outputs(model, x, device):
        assert_matches(out, exp, dt)


def test_tiny_variance_next_to_the_mean(device):
    """Groups with mean ~0.95 and standard deviation ~5e-3 (variance ~3e-5 of mean^2), eps
    far below the variance so the variance sets the scale: the statistics must not lose it to
    cancellation (sum(v^2) - sum(v)^2 / n in fp32 loses ~1e-2 of it here). fp32 only: in
    half precision the values themselves carry only ~3 significant bits of the variation."""
    ref = reference_model(CASE)
    ref.group_norm.eps = 1e-9
    with torch.no_grad():
        ref.conv.weight.normal_(0, 0.04)
        ref.conv.bias.zero_()
        ref.bias.fill_(3.0)
        ref.scale.fill_(1.0)
    model = fused_model(CASE, ref).to(device)
    model.group_norm.eps = 1e-9
    x = random_input(CASE).to(device)
    ref64 = copy.deepcopy(ref).double()  # helpers.expected would not carry the eps over
    with torch.no_grad():
        exp = ref64(x.cpu().double())
        # The setup: pre-normalization values per (sample, group) as described.
        v = torch.sigmoid((ref64.conv(x.cpu().double()) + ref64.bias) * ref64.scale)
    v = v.reshape(CASE.n, CASE.groups, -1)
    ratio = (v.var(-1) / v.mean(-1).square()).max().item()
    assert ratio < 1e-4 and v.std(-1).min().item() > 1e-3, ratio
    for out in outputs(model, x, device):
        assert_matches(out, exp, torch.float32)
