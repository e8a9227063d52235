"""Every bad input gets a clear error naming the argument, before anything runs: on CPU, on the
meta device (the fake kernel's path) and on CUDA, through the one validation routine."""
import re

import pytest
import torch

import fusedconv

DEVICES = ["cpu", "meta", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


def good_args(device):
    t = lambda *s: torch.rand(*s, device=device)  # noqa: E731
    return dict(x=t(2, 3, 10, 10), weight=t(8, 3, 3, 3), conv_bias=t(8), bias=t(8, 1, 1),
                scale=t(8), gn_weight=t(8), gn_bias=t(8), num_groups=4, eps=1e-5,
                stride=[1, 1], padding=[0, 0], dilation=[1, 1])


def call(a):
    return torch.ops.fusedconv.forward(a["x"], a["weight"], a["conv_bias"], a["bias"], a["scale"],
                                       a["gn_weight"], a["gn_bias"], a["num_groups"], a["eps"],
                                       a["stride"], a["padding"], a["dilation"])


# (id, change to the good arguments, exception type, words the message must contain)
BAD = [
    ("x_3d", lambda a: a.update(x=a["x"][0]), ValueError, "x must be 4-D"),
    ("x_5d", lambda a: a.update(x=a["x"][None]), ValueError, "x must be 4-D"),
    ("weight_3d", lambda a: a.update(weight=a["weight"][0]), ValueError, "weight must be 4-D"),
    ("c_in_mismatch", lambda a: a.update(weight=a["weight"][:, :2].contiguous()), ValueError, "C_in"),
    ("groups_not_dividing", lambda a: a.update(num_groups=3), ValueError, "num_groups = 3 must divide C_out"),
    ("groups_zero", lambda a: a.update(num_groups=0), ValueError, "num_groups must be positive"),
    ("groups_negative", lambda a: a.update(num_groups=-2), ValueError, "num_groups must be positive"),
    ("groups_above_c_out", lambda a: a.update(num_groups=16), ValueError, "num_groups = 16 must divide"),
    ("bias_numel", lambda a: a.update(bias=a["bias"][:7]), ValueError, "bias must have shape"),
    ("scale_numel", lambda a: a.update(scale=torch.cat([a["scale"], a["scale"]])), ValueError, "scale must have shape"),
    ("scale_2d", lambda a: a.update(scale=a["scale"].view(2, 4)), ValueError, "scale must have shape"),
    ("conv_bias_numel", lambda a: a.update(conv_bias=a["conv_bias"][:4]), ValueError, "conv_bias must have shape"),
    ("gn_weight_numel", lambda a: a.update(gn_weight=a["gn_weight"][:1]), ValueError, "gn_weight must have shape"),
    ("gn_bias_numel", lambda a: a.update(gn_bias=a["gn_bias"][:5]), ValueError, "gn_bias must have shape"),
    ("weight_dtype", lambda a: a.update(weight=a["weight"].half()), TypeError, "weight has dtype float16 but x has dtype float32"),
    ("bias_dtype", lambda a: a.update(bias=a["bias"].double()), TypeError, "bias has dtype float64 but x has dtype float32"),
    ("gn_bias_dtype", lambda a: a.update(gn_bias=a["gn_bias"].bfloat16()), TypeError, "gn_bias has dtype bfloat16 but x has dtype float32"),
    ("x_integer", lambda a: a.update(x=(a["x"] * 10).long()), TypeError, "x must be float32, float16 or bfloat16, got int64"),
    ("x_double", lambda a: a.update(x=a["x"].double(), weight=a["weight"].double()), TypeError, "x must be float32, float16 or bfloat16, got float64"),
    ("kernel_too_large", lambda a: a.update(weight=torch.rand(8, 3, 11, 3, device=a["x"].device)), ValueError, "kernel's height"),
    ("kernel_too_large_dilated", lambda a: a.update(dilation=[1, 5]), ValueError, "kernel's width"),
    ("stride_zero", lambda a: a.update(stride=[0, 1]), ValueError, "stride must be positive"),
    ("dilation_negative", lambda a: a.update(dilation=[1, -1]), ValueError, "dilation must be positive"),
    ("padding_negative", lambda a: a.update(padding=[-1, 0]), ValueError, "padding must be >= 0"),
    ("stride_three_values", lambda a: a.update(stride=[1, 1, 1]), ValueError, "stride must hold 1 or 2"),
    ("eps_nan", lambda a: a.update(eps=float("nan")), ValueError, "eps must be finite"),
    ("eps_inf", lambda a: a.update(eps=float("inf")), ValueError, "eps must be finite"),
    ("eps_negative", lambda a: a.update(eps=-1.0), ValueError, "eps must be finite and >= 0"),
    ("weight_zero_sized", lambda a: a.update(weight=a["weight"][:, :, :0]), ValueError, "zero-sized"),
    ("weight_zero_c_out", lambda a: a.update(weight=a["weight"][:0]), ValueError, "weight must have no zero-sized"),
    ("weight_zero_c_in", lambda a: a.update(weight=a["weight"][:, :0]), ValueError, "weight must have no zero-sized"),
    ("weight_zero_kw", lambda a: a.update(weight=a["weight"][..., :0]), ValueError, "weight must have no zero-sized"),
    ("weight_5d", lambda a: a.update(weight=a["weight"][None]), ValueError, "weight must be 4-D"),
    ("x_2d", lambda a: a.update(x=a["x"][0, 0]), ValueError, "x must be 4-D"),
    ("x_zero_channels", lambda a: a.update(x=a["x"][:, :0]), ValueError, "x has C_in = 0"),
    # Padding makes room for the kernel, so only the empty-image check can catch these.
    ("x_zero_height", lambda a: a.update(x=a["x"][:, :, :0], padding=[2, 2]), ValueError, "x must have a non-empty image"),
    ("x_zero_width", lambda a: a.update(x=a["x"][..., :0], padding=[2, 2]), ValueError, "x must have a non-empty image"),
    ("groups_far_above_c_out", lambda a: a.update(num_groups=2**40), ValueError, "must divide C_out"),
    ("conv_bias_c11", lambda a: a.update(conv_bias=a["conv_bias"].view(8, 1, 1)), ValueError, "conv_bias must have shape"),
    ("gn_weight_c11", lambda a: a.update(gn_weight=a["gn_weight"].view(8, 1, 1)), ValueError, "gn_weight must have shape"),
    ("bias_c11_wrong", lambda a: a.update(bias=a["bias"].view(1, 8, 1)), ValueError, "bias must have shape"),
    ("scale_scalar", lambda a: a.update(scale=a["scale"][0]), ValueError, "scale must have shape"),
    ("x_bool", lambda a: a.update(x=a["x"] > 0.5), TypeError, "x must be float32, float16 or bfloat16, got bool"),
    ("x_complex", lambda a: a.update(x=torch.complex(a["x"], a["x"])), TypeError, "x must be float32, float16 or bfloat16, got complex64"),
    ("scale_half", lambda a: a.update(scale=a["scale"].half()), TypeError, "scale has dtype float16 but x has dtype float32"),
    ("conv_bias_dtype", lambda a: a.update(conv_bias=a["conv_bias"].bfloat16()), TypeError, "conv_bias has dtype bfloat16 but x has dtype float32"),
    ("gn_weight_dtype", lambda a: a.update(gn_weight=a["gn_weight"].half()), TypeError, "gn_weight has dtype float16 but x has dtype float32"),
    ("eps_minus_inf", lambda a: a.update(eps=float("-inf")), ValueError, "eps must be finite"),
    ("eps_past_float32", lambda a: a.update(eps=1e39), ValueError, "eps must be finite"),
    ("stride_negative", lambda a: a.update(stride=[1, -2]), ValueError, "stride must be positive"),
    ("dilation_zero", lambda a: a.update(dilation=[0, 1]), ValueError, "dilation must be positive"),
    ("padding_three_values", lambda a: a.update(padding=[0, 0, 0]), ValueError, "padding must hold 1 or 2"),
    ("dilation_empty", lambda a: a.update(dilation=[]), ValueError, "dilation must hold 1 or 2"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mutate,exc,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_argument(device, mutate, exc, words):
    a = good_args(device)
    call(a)  # the unmodified arguments are fine
    mutate(a)
    with pytest.raises(exc, match=words.replace("(", r"\(")):
        call(a)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mutate,exc,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_requiring_grad(device, mutate, exc, words):
    """Through the autograd kernel (python/fusedconv/autograd.py) the same checks run first."""
    a = good_args(device)
    mutate(a)
    for k, v in a.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
            a[k] = v.detach().requires_grad_()
    with pytest.raises(exc, match=words.replace("(", r"\(")):
        call(a)


DTYPE_ERRORS = [b for b in BAD if b[2] is TypeError]
# ATen's names for dtypes, which a streamed ScalarType prints: users know torch's (float32).
ATEN_DTYPE_NAMES = re.compile(r"\b(Float|Half|BFloat16|Double|Long|Int|Bool|ComplexFloat)\b")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mutate", [b[1] for b in DTYPE_ERRORS], ids=[b[0] for b in DTYPE_ERRORS])
def test_dtype_errors_use_torch_names(device, mutate):
    a = good_args(device)
    mutate(a)
    with pytest.raises(TypeError) as e:
        call(a)
    message = str(e.value).splitlines()[0]
    assert re.search(r"\b(float32|float16|bfloat16|float64|int64|bool|complex64)\b", message), message
    assert not ATEN_DTYPE_NAMES.search(message), message


PARAMS = ["weight", "bias", "scale", "conv_bias", "gn_weight", "gn_bias"]


@pytest.mark.parametrize("name", PARAMS)
def test_mixed_devices(name):
    a = good_args("cpu")
    a[name] = a[name].to("meta")
    with pytest.raises(RuntimeError, match=f"{name} is on meta but x is on cpu"):
        call(a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["x"] + PARAMS)
def test_mixed_cpu_and_cuda(name):
    """One argument off x's device: the CUDA kernel is dispatched (any CUDA argument selects
    it) and must refuse before launching anything on a CPU pointer."""
    a = good_args("cuda")
    a[name] = a[name].cpu()
    where = "x is on cpu" if name == "x" else f"{name} is on cpu but x is on cuda"
    with pytest.raises(RuntimeError, match=where):
        call(a)


def test_errors_come_through_the_module():
    m = fusedconv.FusedConvSigmoidGroupNorm(3, 8, 3, 4)
    with pytest.raises(ValueError, match="x has C_in = 5"):
        m(torch.rand(1, 5, 10, 10))
