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


@pytest.fixture
def fp32_matmul_precision():
    """torch.set_float32_matmul_precision, restored after the test."""
    previous = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(previous)


@pytest.fixture
def interpreter(monkeypatch):
    """Triton's interpreter (CPU tensors; skips unless TRITON_INTERPRET=1 was set before
    Triton's import), with two Triton 3.6 bugs mended so the kernels can be tested as written.

    1. It turns a scalar into an int with int(np.array([v])), which NumPy >= 2.4 refuses, so
       any range() over a runtime bound fails; read the one element instead.
    2. It hands bf16 operands to np.matmul as their raw 16-bit patterns (numpy has no bf16), so
       every bf16 tl.dot comes out as garbage. Widen them to the fp32 values they encode first
       (exact: bf16 is fp32's top half), as the GPU's MMA does."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET=1 must be set before Triton is imported")
    import numpy as np
    import triton
    from triton.runtime import interpreter as interp

    original = interp.InterpreterBuilder.create_dot

    def widen(h):
        if h.dtype.scalar == triton.language.bfloat16:
            bits = h.data.astype(np.uint16).astype(np.uint32) << 16
            return interp.TensorHandle(bits.view(np.float32), triton.language.float32)
        return h

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interp.InterpreterBuilder, "create_dot", create_dot)

    patch_tensor = interp._patch_lang_tensor

    def patch_tensor_with_scalar_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    monkeypatch.setattr(interp, "_patch_lang_tensor", patch_tensor_with_scalar_index)
