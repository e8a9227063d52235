"""Autograd for torch.ops.fusedconv.forward.

Without this, PyTorch's fallback for an op with no autograd kernel ("warn" mode) attaches a
node whose backward only warns and returns no gradient: every input's gradient through the op
would silently be missing on CUDA. The forward stays the fused kernel; the backward recomputes
the forward through the ATen composite the CPU kernel uses (conv2d, sigmoid, group_norm, in
fp32) and differentiates that, so gradients are exactly PyTorch's for the reference math. The
recomputation is itself differentiable when the caller asks for a graph (create_graph=True),
so double backward is correct too. Registered from Python: a program that loads the op library
without Python (libtorch, C++ TorchScript) has no backward (docs/hardening.md).
"""
import torch
import torch.nn.functional as F

_NUM_TENSORS = 7  # x, weight, conv_bias, bias, scale, gn_weight, gn_bias


def composite(x, weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups, eps, stride,
              padding, dilation):
    """The op's math as differentiable ATen ops, in fp32 whatever the inputs' dtype."""
    f = lambda t: None if t is None else t.float()  # noqa: E731
    c_out = weight.shape[0]
    z = F.conv2d(f(x), f(weight), f(conv_bias), stride, padding, dilation)
    z = torch.sigmoid((z + f(bias).reshape(1, c_out, 1, 1)) * f(scale).reshape(1, c_out, 1, 1))
    return F.group_norm(z, num_groups, f(gn_weight), f(gn_bias), eps)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:_NUM_TENSORS])
    ctx.geometry = inputs[_NUM_TENSORS:]


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    wanted = [i for i in range(_NUM_TENSORS) if ctx.needs_input_grad[i]]
    # Grad mode is on inside backward exactly when the caller asked for create_graph: then the
    # gradients must stay connected to the saved inputs, so nothing here is detached.
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        # One alias per argument: one tensor passed as several arguments (bias and scale both
        # `p`) gets each argument's share, which autograd then sums, not the total each time.
        args = [None if t is None else t.view_as(t) for t in saved]
        out = composite(*args, *ctx.geometry)
        grads = torch.autograd.grad(out, [args[i] for i in wanted], grad.to(out.dtype),
                                    create_graph=create_graph, allow_unused=True)
    result = [None] * (_NUM_TENSORS + len(ctx.geometry))
    for i, g in zip(wanted, grads):
        result[i] = g
    return tuple(result)


def register():
    """Called once by fusedconv/__init__.py, after the op library is loaded. The backward goes
    on fusedconv::_forward_differentiable, where forward's C++ autograd kernel sends the calls
    that need a gradient (csrc/forward_autograd.cpp); calls that need none never reach Python."""
    torch.library.register_autograd("fusedconv::_forward_differentiable", _backward,
                                    setup_context=_setup_context)
