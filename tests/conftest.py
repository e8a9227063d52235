import os

# The kernel tests launch bare @triton.jit functions on CPU tensors; Triton reads this when the
# kernel module is imported, so it is set before any test imports it. Nothing on the op's run
# path imports Triton, so the op tests are unaffected.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
