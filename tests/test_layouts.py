"""Layouts: channels_last, slices with strides and storage offsets, expanded (stride 0) inputs,
for x and for every parameter, give the contiguous result. Views are cut out of NaN-filled
buffers, so a kernel that reads one element outside the view turns its output NaN."""
import contextlib

import pytest
import torch

import fusedconv
from helpers import (DTYPES, Case, algorithms_for, assert_matches, expected, forward_args, fused_model,
                     poison_cuda_allocator, random_input, reference_model)

# Ragged everywhere: 17x12 outputs (4 position tiles of 64), 12 channels (a part channel block).
CASE = Case(n=3, c_in=5, c_out=12, h=19, w=23, kernel=(3, 2), groups=3, stride=(1, 2),
            padding=(1, 1), dilation=(2, 1))


def inside_nan(t, pad=(1, 2, 3, 1), step=2):
    """t's values as a view into a NaN buffer: offset by `pad` in each dim, every `step`-th
    element along the last dim."""
    shape = [s + p + 1 for s, p in zip(t.shape, pad)]
    shape[-1] = t.shape[-1] * step + pad[-1] + 1
    buf = torch.full(shape, float("nan"), dtype=t.dtype, device=t.device)
    index = tuple(slice(p, p + s) for p, s in zip(pad, t.shape[:-1]))
    view = buf[index + (slice(pad[-1], pad[-1] + t.shape[-1] * step, step),)]
    view.copy_(t)
    assert view.storage_offset() > 0 and not view.is_contiguous()
    return view


def channels_last_slice(t):
    """t as channels 2..2+C of a channels_last NaN buffer: NHWC strides, a storage offset."""
    n, c, h, w = t.shape
    buf = torch.full((n, c + 3, h, w), float("nan"), dtype=t.dtype, device=t.device)
    buf = buf.contiguous(memory_format=torch.channels_last)
    view = buf[:, 2:2 + c]
    view.copy_(t)
    return view


def strided_vector(t):
    """A (C,) or (C, 1, 1) parameter as a stride-3 view at offset 1 of a NaN buffer."""
    flat = t.reshape(-1)
    buf = torch.full((flat.numel() * 3 + 2,), float("nan"), dtype=t.dtype, device=t.device)
    view = buf[1:1 + flat.numel() * 3:3]
    view.copy_(flat)
    return view.view(t.shape) if t.dim() == 1 else view[:, None, None]


def transposed_hw(t):
    return t.transpose(2, 3).contiguous().transpose(2, 3)


X_LAYOUTS = {
    "contiguous": lambda x: x,
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "slice_offset": lambda x: inside_nan(x),
    "channels_last_slice": channels_last_slice,
    "transposed_hw": transposed_hw,
    # stride 0: every sample the first one, every channel the first one
    "expanded_batch": lambda x: x[:1].expand_as(x),
    "expanded_channels": lambda x: x[:, :1].expand_as(x),
}

PARAM_LAYOUTS = {
    "weight_channels_last": lambda a: a.update(weight=a["weight"].contiguous(memory_format=torch.channels_last)),
    "weight_slice_offset": lambda a: a.update(weight=inside_nan(a["weight"])),
    "weight_transposed": lambda a: a.update(weight=transposed_hw(a["weight"])),
    "vectors_strided": lambda a: a.update({k: strided_vector(a[k]) for k in
                                           ("conv_bias", "bias", "scale", "gn_weight", "gn_bias")}),
}

NAMES = ["x", "weight", "conv_bias", "bias", "scale", "gn_weight", "gn_bias"]


def algorithms(device, model, x):
    return algorithms_for(model, x) if device == "cuda" else ("",)


def run(args, device, algorithm, out_numel):
    poison_cuda_allocator(out_numel * 8)
    forced = fusedconv.forced_algorithm(algorithm) if algorithm else contextlib.nullcontext()
    with forced, torch.no_grad():
        return torch.ops.fusedconv.forward(*args)


@pytest.fixture(scope="module")
def reference():
    return reference_model(CASE)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("layout", list(X_LAYOUTS))
def test_x_layouts(layout, dtype, device, reference):
    dt = DTYPES[dtype]
    model = fused_model(CASE, reference).to(device, dt)
    x = X_LAYOUTS[layout](random_input(CASE).to(device, dt))
    exp = expected(CASE, x.cpu().contiguous(), reference, dt)
    for algorithm in algorithms(device, model, x):
        out = run(forward_args(model, x), device, algorithm, exp.numel())
        assert out.is_contiguous()
        assert_matches(out, exp, dt)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("layout", list(PARAM_LAYOUTS) + ["everything"])
def test_parameter_layouts(layout, dtype, device, reference):
    dt = DTYPES[dtype]
    model = fused_model(CASE, reference).to(device, dt)
    x = random_input(CASE).to(device, dt)
    exp = expected(CASE, x.cpu(), reference, dt)
    a = dict(zip(NAMES, [t.detach() for t in forward_args(model, x)[:7]]))
    for change in (PARAM_LAYOUTS.values() if layout == "everything" else [PARAM_LAYOUTS[layout]]):
        change(a)
    if layout == "everything":
        a["x"] = inside_nan(a["x"])
    args = [a[k] for k in NAMES] + list(forward_args(model, x)[7:])
    for algorithm in algorithms(device, model, x):
        assert_matches(run(args, device, algorithm, exp.numel()), exp, dt)
