"""CUDA-only checks: the benchmark shape, every block config, the TF32 opt-in, which images
run, and the run path without Triton. Skipped without a GPU; run on the device machine, both
natively and with FUSEDCONV_FORCE_PTX=89 (the RTX 4090's kernel code on Hopper)."""
import os
import subprocess
import sys

import pytest
import torch

import fusedconv
from helpers import (DTYPES, Case, algorithms_for, fresh_env, assert_matches, expected, fused_model, poison_cuda_allocator, prepared,
                     random_input, reference, reference_model)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_images_in_use():
    images = torch.ops.fusedconv._device_images(torch.cuda.current_device())
    major, minor = torch.cuda.get_device_capability()
    forced = os.environ.get("FUSEDCONV_FORCE_PTX")
    if forced:
        assert images == f"sm_{forced.removeprefix('sm_')} PTX"
    else:
        assert images == f"sm_{major}{minor} cubin"


@pytest.mark.parametrize("algorithm", ["", "materialize", "recompute", "channels_last"],
                         ids=["default", "materialize", "recompute", "channels_last"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_benchmark_shape(dtype, algorithm):
    """The benchmark problem at its full size, checked the benchmark's way: allclose against
    the reference module in fp32 on the same inputs (1e-4 for fp32, 1e-2 for fp16/bf16)."""
    torch.manual_seed(0)
    dt = DTYPES[dtype]
    ref = reference.Model(*reference.get_init_inputs()).cuda()
    ours = fusedconv.ModelNew(*reference.get_init_inputs())
    ours.load_state_dict(ref.state_dict())
    ours = ours.cuda().to(dt)
    x = reference.get_inputs()[0].cuda().to(dt)
    ref_in = ref.to(dt).float()  # parameters rounded as the op sees them
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            exp = ref_in(x.float())
            poison_cuda_allocator(exp.numel() * 4)
            with fusedconv.forced_algorithm(algorithm):
                out = ours(x)
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    tol = 1e-4 if dt == torch.float32 else 1e-2
    assert out.dtype == dt and torch.isfinite(out).all()
    err = (out.float() - exp).abs().max().item()
    assert torch.allclose(out.float(), exp, atol=tol, rtol=tol), f"max |err| {err:.3e}"


CONFIG_CASES = [
    Case(n=2, c_in=3, c_out=40, h=37, w=45, kernel=(3, 2), groups=5, stride=(1, 2), padding=(1, 1), dilation=(2, 1)),
    Case(n=3, c_in=8, c_out=32, h=70, w=66, groups=8),
]


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("case", CONFIG_CASES, ids=str)
def test_every_config(case, dtype):
    """Each block config the build carries, forced, with each algorithm, on ragged shapes."""
    dt = DTYPES[dtype]
    model, x, exp = prepared(case, "cuda", dt)
    for algorithm in algorithms_for(model, x):
        for config in fusedconv.conv_configs():
            poison_cuda_allocator(exp.numel() * 8)
            with fusedconv.forced_config(config), fusedconv.forced_algorithm(algorithm), torch.no_grad():
                assert_matches(model(x), exp, dt)


def _one_element_in(t):
    """t's values in a view one element into its storage: 4 or 2 bytes off 16-byte alignment."""
    flat = torch.cat([t.detach().reshape(-1)[:1], t.detach().reshape(-1)])
    return flat[1:].view_as(t)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_channels_last_unit_flavour_needs_aligned_parameters(dtype):
    """A shape the channels-last unit flavour takes, whose images assume every pointer 16-byte
    aligned: parameters one element off alignment must take the general flavour, not fault in
    a vector load or read shifted values."""
    dt = DTYPES[dtype]
    case = Case(n=2, c_in=8, c_out=32, h=40, w=140, groups=8)
    model, x, exp = prepared(case, "cuda", dt)
    conv, gn = model.conv, model.group_norm
    params = [_one_element_in(t) for t in (conv.weight, conv.bias, model.bias, model.scale, gn.weight, gn.bias)]
    assert all(p.data_ptr() % 16 for p in params)
    for aligned in (False, True):
        args = params if not aligned else [p.clone() for p in params]
        poison_cuda_allocator(exp.numel() * 8)
        with fusedconv.forced_algorithm("channels_last"), torch.no_grad():
            out = torch.ops.fusedconv.forward(x, args[0], args[1], args[2], args[3], args[4], args[5], case.groups,
                                              gn.eps, [1, 1], [0, 0], [1, 1])
        assert_matches(out, exp, dt)


@pytest.mark.parametrize("c_in, algorithm", [(8, "channels_last"), (9, "materialize"), (64, "materialize")])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "tf32"])
def test_default_algorithm_follows_input_channels(fp32_matmul_precision, dtype, c_in, algorithm):
    """Past the resident kernel, 16-bit and TF32 calls run channels_last over one chunk of 8
    input channels and materialize beyond (where channels_last's second conv costs more than
    materialize's extra bytes): the default's output is bit-identical to the forced one's."""
    fp32_matmul_precision("high" if dtype == "tf32" else "highest")
    dt = DTYPES["fp32" if dtype == "tf32" else dtype]
    case = Case(n=2, c_in=c_in, c_out=32, h=40, w=70, groups=8, padding=(1, 1))
    model, x, exp = prepared(case, "cuda", dt)
    with torch.no_grad():
        poison_cuda_allocator(exp.numel() * 8)
        default = model(x)
        with fusedconv.forced_algorithm(algorithm):
            forced = model(x)
    assert torch.equal(default, forced)
    if dtype != "tf32":  # TF32 is checked against the reference in test_tf32_is_opt_in
        assert_matches(default, exp, dt)


def test_algorithm_override_is_checked():
    with pytest.raises(ValueError, match="algorithm must be"):
        torch.ops.fusedconv._set_algorithm("fastest")


def test_tf32_is_opt_in(fp32_matmul_precision):
    case = Case(n=2, c_in=8, c_out=32, h=40, w=40, groups=8)
    model, x, exp = prepared(case, "cuda")
    with torch.no_grad():
        fp32_matmul_precision("highest")
        accurate = model(x)
        fp32_matmul_precision("high")
        tf32 = model(x)
    assert_matches(accurate, exp, torch.float32)
    assert not torch.equal(accurate, tf32), "'high' precision should select the TF32 kernels"
    assert torch.allclose(tf32.double().cpu(), exp, atol=1e-2, rtol=1e-2)


def test_runs_on_the_current_stream():
    """Ordering proved with a stalled stream: on a side stream, a ~100 ms sleep, then x is
    written, then the op. Run anywhere but after that write (another stream), the op would
    read the old x; and the host must get control back while the sleep still runs (no host
    synchronization inside the op)."""
    case = Case(n=2, c_in=3, c_out=8, h=30, w=30, groups=4)
    ref = reference_model(case)
    model = fused_model(case, ref).cuda()
    old = random_input(case, seed=1)
    new = random_input(case, seed=2)
    x = old.cuda()
    new_gpu = new.cuda()
    with torch.no_grad():  # a first call loads its kernels' modules, which may wait for the GPU
        model(x)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side), torch.no_grad():
        torch.cuda._sleep(200_000_000)  # ~100 ms at ~2 GHz
        x.copy_(new_gpu)
        out = model(x)
        done = torch.cuda.Event()
        done.record()
    assert not done.query(), "the host waited for the side stream"
    torch.cuda.current_stream().wait_event(done)
    assert_matches(out, expected(case, new, ref, torch.float32), torch.float32)


@pytest.mark.parametrize("algorithm", fusedconv.ALGORITHMS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_repeatable_bitwise(dtype, algorithm):
    """20 runs, bitwise equal, with the allocator's free blocks refilled with different junk
    before each: a read of anything the op did not write first would show up as a difference."""
    dt = DTYPES[dtype]
    case = Case(n=2, c_in=8, c_out=40, h=50, w=47, groups=8, padding=(1, 0))
    if algorithm == "resident":  # the same checks on a shape whose groups fit one program
        case = Case(n=2, c_in=8, c_out=40, h=22, w=21, groups=8, padding=(1, 0))
    model, x, exp = prepared(case, "cuda", dt)
    junk = [float("nan"), 0.0, -1e30, 7.0, float("inf")]
    with torch.no_grad(), fusedconv.forced_algorithm(algorithm):
        first = model(x)
        assert_matches(first, exp, dt)
        for i in range(20):
            for block in [torch.empty(exp.numel() * 2 + 1, device="cuda") for _ in range(2)]:
                block.fill_(junk[i % len(junk)])
            del block
            assert torch.equal(model(x), first), f"run {i + 2} differs from the first"


def test_cuda_path_needs_no_triton():
    """The op runs with Triton unimportable: nothing on the run path uses it."""
    code = """
import sys
sys.modules['triton'] = None  # any `import triton` now raises ImportError
import torch, fusedconv
x = torch.rand(2, 3, 20, 20)
w, p = torch.randn(8, 3, 3, 3), torch.randn(8)
cpu = fusedconv.forward(x, w, p, p, p, p, p, 4)
gpu = fusedconv.forward(x.cuda(), w.cuda(), p.cuda(), p.cuda(), p.cuda(), p.cuda(), p.cuda(), 4)
assert torch.allclose(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4), (gpu.cpu() - cpu).abs().max()
try:
    import triton
    raise SystemExit('triton was importable')
except ImportError:
    pass
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=fresh_env())
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_autotune_tunes_once_per_shape_and_persists(tmp_path):
    cache = tmp_path / "tune.tsv"
    case = Case(n=2, c_in=8, c_out=32, h=40, w=44, groups=8)
    model, x, exp = prepared(case, "cuda")
    fusedconv.autotune(True, str(cache))
    try:
        with torch.no_grad():
            assert_matches(model(x), exp, torch.float32)
            assert_matches(model(x), exp, torch.float32)
    finally:
        fusedconv.autotune(False)
    lines = cache.read_text().splitlines()
    assert len(lines) == 1, lines  # tuned once for the shape, not per call
    key, config, algorithm = lines[0].split("\t")
    assert config in fusedconv.conv_configs() and algorithm in fusedconv.ALGORITHMS
    # A fresh process takes the choice from the file instead of tuning again.
    code = f"""
import torch, fusedconv
fusedconv.autotune(True, {str(cache)!r})
print(len(fusedconv.autotune_entries()))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stdout + r.stderr


def test_autotune_never_runs_during_graph_capture(tmp_path):
    cache = tmp_path / "tune.tsv"
    case = Case(n=2, c_in=8, c_out=32, h=36, w=30, groups=4)
    model, x, exp = prepared(case, "cuda")
    with torch.no_grad():
        model(x)  # loads the heuristic's kernels outside the capture
        torch.cuda.synchronize()
        fusedconv.autotune(True, str(cache))
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = model(x)
            graph.replay()
            torch.cuda.synchronize()
        finally:
            fusedconv.autotune(False)
    assert_matches(out, exp, torch.float32)
    shape_key = str(list(x.shape))
    assert not [e for e in fusedconv.autotune_entries() if shape_key in e[0]], "tuned during capture"
    assert not cache.exists()


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("special", ["inf", "nan"])
def test_non_finite_inputs_match_the_reference(special, dtype):
    """+-inf stays finite through sigmoid (as in the reference); NaN poisons its (sample,
    group) through the statistics, as in the reference. Both algorithms, every dtype."""
    dt = DTYPES[dtype]
    case = Case(n=2, c_in=3, c_out=8, h=20, w=20, groups=4)
    ref = reference_model(case)
    with torch.no_grad():
        ref.conv.weight.abs_()  # one sign per channel, so the conv holds no inf - inf
    model = fused_model(case, ref).cuda().to(dt)
    x = random_input(case)
    x[0, 0, 5, 5] = float(special)
    if special == "inf":
        x[1, 2, 10, 3] = -float(special)
    exp = expected(case, x, ref, dt)
    # The setup: inf gives a finite result; NaN takes all of sample 0 and leaves sample 1.
    assert torch.isfinite(exp).all() if special == "inf" else (exp[0].isnan().all() and exp[1].isfinite().all())
    tol = 1e-4 if dt == torch.float32 else 1e-2
    with torch.no_grad():
        for algorithm in algorithms_for(model, x):
            poison_cuda_allocator(exp.numel() * 8)
            with fusedconv.forced_algorithm(algorithm):
                out = model(x.cuda().to(dt))
            torch.testing.assert_close(out.cpu().double(), exp, atol=tol, rtol=tol, equal_nan=True)
