"""Tensors that require grad: the op is differentiable (python/fusedconv/autograd.py), and its
gradients, first and second order, are the reference model's. Before it had a backward,
PyTorch's fallback returned no gradient on CUDA with only a warning: a silent wrong gradient."""
import warnings

import pytest
import torch

import fusedconv
from helpers import DTYPES, Case, forward_args, fused_model, random_input, reference_model

CASE = Case(n=2, c_in=3, c_out=8, h=9, w=11, groups=4, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
NAMES = ["x", "conv.weight", "conv.bias", "bias", "scale", "group_norm.weight", "group_norm.bias"]


def models(device, dtype, case=CASE):
    """(fused module on device in dtype, float64 reference on CPU holding the same rounded
    parameters, input x on device in dtype, the same x in float64)."""
    ref = reference_model(case)
    fused = fused_model(case, ref).to(device, dtype)
    ref = ref.to(dtype).double()
    x = random_input(case).to(device, dtype)
    return fused, ref, x.requires_grad_(), x.detach().cpu().double().requires_grad_()


def tensors(model, x):
    params = dict(model.named_parameters())
    return [x] + [params[n] for n in NAMES[1:]]


def assert_grads_close(ours, theirs, dtype):
    # Relative to each gradient's largest entry: gradients span orders of magnitude.
    tol = 2e-4 if dtype == torch.float32 else 3e-2
    for name, a, b in zip(NAMES, ours, theirs):
        assert a is not None and a.dtype == dtype, f"{name}: {a}"
        a = a.detach().cpu().double()
        err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-6)
        assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_gradients_match_the_reference(device, dtype):
    dt = DTYPES[dtype]
    if device == "cpu" and dt != torch.float32:
        pytest.skip("one CPU dtype is enough: the CPU kernel is the same composite")
    fused, ref, x, x_ref = models(device, dt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch's no-autograd-kernel fallback only warns
        y = fused(x)
    assert y.requires_grad and y.grad_fn is not None
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    ours = torch.autograd.grad(y, tensors(fused, x), grad_out.to(device, dt))
    theirs = torch.autograd.grad(ref(x_ref), tensors(ref, x_ref), grad_out.double())
    assert_grads_close(ours, theirs, dt)


def test_training_step_matches_the_reference(device):
    """backward() on a loss that also uses the parameters elsewhere: the op's share is added."""
    fused, ref, x, x_ref = models(device, torch.float32)
    for model, inp in ((fused, x), (ref, x_ref)):
        out = model(inp)
        loss = (out * out).mean() + model.scale.sum() * 0.1
        loss.backward()
    ours = [x.grad] + [p.grad for p in tensors(fused, x)[1:]]
    theirs = [x_ref.grad] + [p.grad for p in tensors(ref, x_ref)[1:]]
    assert_grads_close(ours, theirs, torch.float32)


def test_one_tensor_as_several_arguments(device):
    """bias, scale and the affine parameters all one tensor: its gradient is the sum of each
    argument's share (a backward that differentiated w.r.t. the tensor per argument would
    count it once per argument)."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 8, 8, generator=g).to(device)
    w = torch.randn(8, 3, 3, 3, generator=g).to(device).requires_grad_()
    p = torch.randn(8, generator=g).to(device).requires_grad_()
    y = fusedconv.forward(x, w, p, p, p, p, p, 4)
    grads = torch.autograd.grad(y.square().sum(), [w, p])
    w64, p64 = (t.detach().cpu().double().requires_grad_() for t in (w, p))
    z = torch.nn.functional.conv2d(x.cpu().double(), w64, p64) + p64.view(1, -1, 1, 1)
    z = torch.nn.functional.group_norm(torch.sigmoid(z * p64.view(1, -1, 1, 1)), 4, p64, p64)
    expect = torch.autograd.grad(z.square().sum(), [w64, p64])
    for a, b in zip(grads, expect):
        torch.testing.assert_close(a.cpu().double(), b, atol=1e-4, rtol=1e-4)


def test_only_requested_gradients(device):
    """Only weight requires grad: the others get none, and None arguments are fine."""
    g = torch.Generator().manual_seed(6)
    x = torch.rand(1, 2, 7, 7, generator=g).to(device)
    w = torch.randn(4, 2, 3, 3, generator=g).to(device).requires_grad_()
    b, s = torch.randn(4, generator=g).to(device), torch.randn(4, generator=g).to(device)
    y = fusedconv.forward(x, w, None, b, s, None, None, 2)
    y.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    assert x.grad is None and b.grad is None and s.grad is None


def test_second_order_matches_the_reference(device):
    """Double backward (gradient penalties): grad of <d y/d x . v, v'> w.r.t. the weight."""
    fused, ref, x, x_ref = models(device, torch.float32)
    g = torch.Generator().manual_seed(7)
    v = torch.randn((CASE.n, CASE.c_out, 5, 7), generator=g, dtype=torch.float64)
    results = []
    for model, inp in ((fused, x), (ref, x_ref)):
        y = model(inp)
        assert y.shape == v.shape
        gx, = torch.autograd.grad(y, inp, v.to(y.device, y.dtype), create_graph=True)
        results.append(torch.autograd.grad(gx.square().sum(), model.conv.weight))
    ours, theirs = results[0][0].detach().cpu().double(), results[1][0]
    err = (ours - theirs).abs().max().item() / theirs.abs().max().item()
    assert err < 1e-3, f"relative error {err:.2e}"


def test_no_graph_under_no_grad(device):
    fused, _, x, _ = models(device, torch.float32)
    with torch.no_grad():
        assert not fused(x).requires_grad
    with torch.inference_mode():
        assert not fused(x.detach()).requires_grad


def test_opcheck_with_gradients(device):
    """PyTorch's own checks of a custom op's autograd registration and its use under
    torch.compile's AOT autograd, with inputs that require grad."""
    fused, _, x, _ = models(device, torch.float32)
    args = forward_args(fused, x)
    torch.library.opcheck(torch.ops.fusedconv.forward.default, args)
