"""The op's registration: schema, opcheck, the fake kernel under FakeTensorMode,
torch.compile and torch.export."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fusedconv
from helpers import Case, forward_args, fused_model, random_input, reference_model

CONTRACT = [("x", "Tensor", None), ("weight", "Tensor", None), ("conv_bias", "Optional[Tensor]", None),
            ("bias", "Tensor", None), ("scale", "Tensor", None), ("gn_weight", "Optional[Tensor]", None),
            ("gn_bias", "Optional[Tensor]", None), ("num_groups", "int", None), ("eps", "float", 1e-5),
            ("stride", "List[int]", [1, 1]), ("padding", "List[int]", [0, 0]), ("dilation", "List[int]", [1, 1])]


def test_schema_is_the_contract():
    schema = torch.ops.fusedconv.forward.default._schema
    got = [(a.name, str(a.type), a.default_value) for a in schema.arguments]
    assert got == CONTRACT
    assert [str(r.type) for r in schema.returns] == ["Tensor"]


def sample_args(device, dtype=torch.float32):
    case = Case(n=2, c_in=3, c_out=8, h=9, w=11, groups=4, padding=(1, 0), stride=(2, 1))
    model = fused_model(case, reference_model(case)).to(device, dtype)
    return forward_args(model, random_input(case).to(device, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(device, dtype):
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in sample_args(device, dtype)]
    torch.library.opcheck(torch.ops.fusedconv.forward.default, args)


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,expect", [
    ((4, 3, 32, 32), (3, 3), [1, 1], [0, 0], [1, 1], (4, 8, 30, 30)),
    ((1, 3, 17, 20), (3, 5), [2, 1], [1, 2], [1, 2], (1, 8, 9, 16)),
    ((2, 3, 5, 5), (1, 1), [3, 3], [0, 0], [1, 1], (2, 8, 2, 2)),
])
def test_fake_kernel_shapes(shape, kernel, stride, padding, dilation, expect):
    with FakeTensorMode():
        x = torch.empty(shape, device="cuda" if torch.cuda.is_available() else "cpu")
        w = torch.empty(8, 3, *kernel, device=x.device)
        p = torch.empty(8, device=x.device)
        out = torch.ops.fusedconv.forward(x, w, p, p, p, p, p, 4, 1e-5, stride, padding, dilation)
        assert tuple(out.shape) == expect and out.dtype == x.dtype and out.device == x.device
    # the same shape from the real conv
    ref = torch.nn.functional.conv2d(torch.rand(shape), torch.rand(8, 3, *kernel), None, stride, padding, dilation)
    assert tuple(ref.shape) == expect


def test_fake_kernel_validates():
    with FakeTensorMode():
        x, w, p = torch.empty(2, 3, 10, 10), torch.empty(8, 3, 3, 3), torch.empty(8)
        with pytest.raises(ValueError, match="num_groups = 3 must divide"):
            torch.ops.fusedconv.forward(x, w, p, p, p, p, p, 3)


def test_torch_compile_fullgraph_and_dynamic():
    case = Case(n=2, c_in=3, c_out=8, h=12, w=12, groups=4)
    model = fused_model(case, reference_model(case))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=True)
    with torch.no_grad():
        for n, size in ((2, 12), (3, 15)):
            x = torch.rand(n, 3, size, size)
            torch.testing.assert_close(compiled(x), model(x))


def test_torch_export_round_trip(tmp_path):
    case = Case(n=2, c_in=3, c_out=8, h=12, w=12, groups=4)
    model = fused_model(case, reference_model(case)).eval()
    x = random_input(case)
    ep = torch.export.export(model, (x,))
    assert any("fusedconv.forward" in str(n.target) for n in ep.graph.nodes)
    torch.export.save(ep, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2")
    with torch.no_grad():
        torch.testing.assert_close(loaded.module()(x), model(x))


def test_autotune_switch_leaves_the_cpu_path_alone(tmp_path):
    case = Case(n=1, c_in=3, c_out=8, h=9, w=9, groups=4)
    model = fused_model(case, reference_model(case))
    x = random_input(case)
    with torch.no_grad():
        before = model(x)
        fusedconv.autotune(True, str(tmp_path / "t.tsv"))
        try:
            assert torch.equal(model(x), before)
        finally:
            fusedconv.autotune(False)
    assert not (tmp_path / "t.tsv").exists()


def test_overrides_reject_unknown_names():
    """The tuning hooks name what they accept instead of silently keeping a typo."""
    with pytest.raises(ValueError, match="no conv config named 'm99_c99'"):
        torch.ops.fusedconv._set_config("m99_c99")
    with pytest.raises(ValueError, match="algorithm must be 'materialize', 'recompute'"):
        torch.ops.fusedconv._set_algorithm("fastest")
    assert torch.ops.fusedconv._get_config() == "" and torch.ops.fusedconv._get_algorithm() == ""
