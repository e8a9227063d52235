"""Outputs and inputs past 2^31 (and 2^32) elements: every offset the kernels and the launcher
compute must be 64-bit where it can exceed 32 bits. Each sample's output depends only on its
own input, so the samples on both sides of each 2^31 / 2^32 boundary, the first and the last
are checked against the reference run on just those samples. The output's memory is filled
with NaN first, so an element never written shows up. ~35 GB of GPU memory, ~20 s."""
import pytest
import torch

import fusedconv
from helpers import reference

pytestmark = [
    pytest.mark.slow,
    # Each case holds ~65 GB of the GPU: the device check runs them after the other tests, one at
    # a time (two suites at once, each running one, ran every other test out of memory).
    pytest.mark.alone,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.mem_get_info()[1] < 60 << 30,
                       reason="needs a GPU with 60 GB"),
]

# (id, batch, C_in, C_out, groups, dtype, algorithm)
CASES = [
    # The benchmark problem (8 -> 32 channels, 256x256, 3x3) at batch 2100: y has 4.34e9
    # elements (past 2^32; fp32 bytes past 2^34).
    ("y_fp32_materialize", 2100, 8, 32, 8, torch.float32, "materialize"),
    ("y_fp32_recompute", 2100, 8, 32, 8, torch.float32, "recompute"),
    # Materialize in bf16 keeps fp32 values in a workspace of y's element count.
    ("y_bf16_materialize", 2100, 8, 32, 8, torch.bfloat16, "materialize"),
    # x past 2^31 elements (64 channels at batch 520), a small y.
    ("x_fp32", 520, 64, 4, 2, torch.float32, "materialize"),
]


def boundary_samples(per_sample, batch):
    picks = {0, batch - 1}
    for limit in (2**31, 2**32):
        if per_sample * batch > limit:
            picks |= {limit // per_sample, min(limit // per_sample + 1, batch - 1)}
    return sorted(picks)


@pytest.mark.parametrize("name,batch,c_in,c_out,groups,dtype,algorithm", CASES, ids=[c[0] for c in CASES])
def test_past_32_bit_offsets(name, batch, c_in, c_out, groups, dtype, algorithm):
    torch.manual_seed(0)
    ref = reference.Model(*reference.get_init_inputs(c_in, c_out, 3, groups)).cuda()
    with torch.no_grad():
        ref.group_norm.weight.normal_()
        ref.group_norm.bias.normal_()
    model = fusedconv.FusedConvSigmoidGroupNorm(c_in, c_out, 3, groups).cuda()
    model.load_state_dict(ref.state_dict())
    model = model.to(dtype)
    ref = ref.to(dtype).float()  # parameters rounded as the op sees them
    x = torch.rand(batch, c_in, 256, 256, device="cuda", dtype=dtype)
    out_numel = batch * c_out * 254 * 254
    assert max(out_numel, x.numel()) > 2**31
    poison = torch.empty(out_numel, device="cuda", dtype=dtype).fill_(float("nan"))
    del poison  # the op's y gets this block back from the caching allocator
    with torch.no_grad(), fusedconv.forced_algorithm(algorithm):
        out = model(x)
        assert out.shape == (batch, c_out, 254, 254)
        assert torch.isfinite(out).all(), "unwritten (NaN) or non-finite elements"
        picks = boundary_samples(c_out * 254 * 254 if out_numel > 2**31 else c_in * 256 * 256, batch)
        cudnn_tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            exp = ref(x[picks].float())
        finally:
            torch.backends.cudnn.allow_tf32 = cudnn_tf32
        got = out[picks].float()
    del out, x
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    for i, sample in enumerate(picks):
        err = (got[i] - exp[i]).abs().max().item()
        assert torch.allclose(got[i], exp[i], atol=tol, rtol=tol), f"sample {sample}: max |err| {err:.3e}"
