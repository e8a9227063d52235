"""The drop-in modules: parameter names, state_dict round trips, constructor checks."""
import io

import pytest
import torch

import fusedconv
from helpers import reference


def reference_benchmark_model():
    return reference.Model(*reference.get_init_inputs())


def test_parameter_names_match_the_reference():
    ours = fusedconv.ModelNew(*reference.get_init_inputs())
    assert list(ours.state_dict()) == list(reference_benchmark_model().state_dict())
    assert sorted(n for n, _ in ours.named_parameters()) == [
        "bias", "conv.bias", "conv.weight", "group_norm.bias", "group_norm.weight", "scale"]


def test_reference_state_dict_loads_and_round_trips():
    torch.manual_seed(3)
    ref = reference_benchmark_model()
    ours = fusedconv.ModelNew(*reference.get_init_inputs())
    ours.load_state_dict(ref.state_dict())  # strict: every key matches
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    again = fusedconv.ModelNew(*reference.get_init_inputs())
    again.load_state_dict(torch.load(buf))
    for (k, a), (_, b) in zip(ref.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.rand(1, 8, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(again(x), ref(x), atol=1e-4, rtol=1e-4)


def test_model_new_has_the_reference_constructor():
    import inspect
    assert list(inspect.signature(fusedconv.ModelNew).parameters) == list(
        inspect.signature(reference.Model).parameters)


def test_module_rejects_string_padding():
    with pytest.raises(ValueError, match="padding"):
        fusedconv.FusedConvSigmoidGroupNorm(3, 8, 3, 4, padding="same")


def test_parametrized_and_reassigned_parameters_are_the_ones_used():
    """forward reads parameters from the modules' dicts for speed: a parametrization (which
    moves the raw tensor out of _parameters) and a reassigned parameter must still be what the
    op sees."""
    import torch.nn.utils.parametrize as P

    class Doubled(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    torch.manual_seed(4)
    ref = reference.Model(8, 16, 3, 4, (16, 1, 1), (16, 1, 1))
    ours = fusedconv.ModelNew(8, 16, 3, 4, (16, 1, 1), (16, 1, 1))
    ours.load_state_dict(ref.state_dict())
    P.register_parametrization(ours.conv, "weight", Doubled())
    new_scale = torch.nn.Parameter(torch.randn(16, 1, 1))
    ours.scale = new_scale
    with torch.no_grad():
        ref.conv.weight.mul_(2)
        ref.scale.copy_(new_scale)
        x = torch.rand(2, 8, 12, 12)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
