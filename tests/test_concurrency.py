"""CUDA graphs, host threads, host synchronization and several GPUs. Skipped without a GPU
(the multi-GPU tests without two)."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fusedconv
from helpers import (Case, DTYPES, TOLERANCE, forward_args, fresh_env, fused_model, prepared, random_input,
                     reference_model)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_two = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")


def exact(args):
    """The op's math in float64 on CPU, from whatever the argument tensors hold now."""
    x, w, cb, b, s, gw, gb, groups, eps, stride, padding, dilation = args
    d = lambda t: None if t is None else t.detach().cpu().double()  # noqa: E731
    c = w.shape[0]
    z = F.conv2d(d(x), d(w), d(cb), stride, padding, dilation)
    z = torch.sigmoid((z + d(b).reshape(1, c, 1, 1)) * d(s).reshape(1, c, 1, 1))
    return F.group_norm(z, groups, d(gw), d(gb), eps)


def assert_close(out, exp, dtype):
    tol = TOLERANCE[dtype]
    err = (out.detach().cpu().double() - exp).abs().max().item()
    assert torch.allclose(out.detach().cpu().double(), exp, atol=tol, rtol=tol), f"max |err| {err:.3e}"


def subprocess_env(**extra):
    return fresh_env(tests_on_path=True, **extra)


@pytest.mark.alone
@pytest.mark.parametrize("algorithm", fusedconv.ALGORITHMS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_graph_replay_follows_inputs_changed_in_place(dtype, algorithm):
    """Capture once (torch.cuda.graph's default "global" mode: a host synchronization or a
    cudaMalloc inside the op fails the capture), then replay after changing x, the weight and
    the bias in place. The weight is non-contiguous, so its contiguous copy is captured work
    too. The output is set to NaN before every replay, so a replay must write all of it, and
    replays must allocate nothing (torch's allocator or the device's free memory)."""
    dt = DTYPES[dtype]
    case = Case(n=2, c_in=3, c_out=20, h=23, w=29, groups=5, padding=(1, 1))
    model = fused_model(case, reference_model(case)).cuda().to(dt)
    args = [a.detach().clone() if isinstance(a, torch.Tensor) else a
            for a in forward_args(model, random_input(case).cuda().to(dt))]
    args[1] = args[1].transpose(2, 3).contiguous().transpose(2, 3)
    x, weight, bias = args[0], args[1], args[3]
    with torch.no_grad(), fusedconv.forced_algorithm(algorithm):
        torch.ops.fusedconv.forward(*args)  # warm-up: loads the kernels outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = torch.ops.fusedconv.forward(*args)
        for step in range(5):
            if step:
                x.copy_(random_input(case, seed=10 + step).to(dt))
                weight.mul_(-0.75)
                bias.add_(0.5)
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            assert_close(out, exact(args), dt)
            if step == 1:  # after every kernel of the loop has run (and lazily loaded) once
                allocated, free = torch.cuda.memory_allocated(), torch.cuda.mem_get_info()[0]
        assert torch.cuda.memory_allocated() == allocated
        assert torch.cuda.mem_get_info()[0] == free


def test_first_call_inside_a_capture_fails_loudly_or_works():
    """In a fresh process the op's first call is inside a capture, so its kernels load during
    it: either the capture works and replays correctly, or a clear error names the capture. A
    crash, an unrelated error or a wrong replay fails the test."""
    code = """
import torch, fusedconv
from helpers import Case, prepared, assert_matches
model, x, exp = prepared(Case(n=2, c_in=3, c_out=8, h=20, w=20, groups=4), "cuda")
graph = torch.cuda.CUDAGraph()
try:
    with torch.no_grad(), torch.cuda.graph(graph):
        out = model(x)
except RuntimeError as e:
    print("ERROR:", e)
    raise SystemExit(0 if "captur" in str(e).lower() else 3)
graph.replay()
torch.cuda.synchronize()
assert_matches(out, exp, torch.float32)
print("REPLAYED OK")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    print(r.stdout)


def test_no_host_synchronization():
    """torch's sync debug mode raises on any synchronizing call torch sees (.item(), a
    blocking copy, ...) inside the op's C++ code."""
    model, x, exp = prepared(Case(n=2, c_in=3, c_out=8, h=20, w=20, groups=4), "cuda")
    with torch.no_grad():
        model(x)
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for algorithm in fusedconv.ALGORITHMS:
                with fusedconv.forced_algorithm(algorithm):
                    out = model(x)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    assert_close(out, exp, torch.float32)


THREADS = """
import threading, torch, fusedconv
from helpers import DTYPES, Case, TOLERANCE, prepared
cases = [Case(n=1, c_in=3, c_out=8, h=17, w=19, groups=4),
         Case(n=2, c_in=4, c_out=40, h=23, w=21, groups=5, padding=(1, 1)),
         Case(n=1, c_in=8, c_out=64, h=20, w=18, groups=8),
         Case(n=3, c_in=2, c_out=12, h=9, w=31, kernel=(1, 3), groups=3, stride=(1, 2)),
         Case(n=2, c_in=5, c_out=16, h=33, w=7, kernel=(5, 1), groups=16, dilation=(2, 1)),
         Case(n=1, c_in=1, c_out=32, h=40, w=40, groups=8, stride=(2, 2)),
         Case(n=2, c_in=3, c_out=6, h=12, w=10, kernel=(5, 5), groups=1, padding=(2, 2)),
         Case(n=1, c_in=6, c_out=48, h=25, w=27, groups=6)]
dtypes = ["fp32", "fp16", "bf16"]
jobs = [prepared(c, "cuda", DTYPES[dtypes[i % 3]]) + (DTYPES[dtypes[i % 3]],) for i, c in enumerate(cases)]
torch.cuda.synchronize()
barrier, failures = threading.Barrier(len(jobs)), []

def work(i):
    model, x, exp, dt = jobs[i]
    try:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream), torch.no_grad():
            barrier.wait()  # every thread's first call at once: the kernels load concurrently
            outs = [model(x) for _ in range(10)]
        stream.synchronize()
        tol = TOLERANCE[dt]
        for out in outs:
            if not torch.allclose(out.cpu().double(), exp, atol=tol, rtol=tol):
                failures.append(f"thread {i}: max |err| {(out.cpu().double() - exp).abs().max().item():.3e}")
    except Exception as e:
        failures.append(f"thread {i}: {type(e).__name__}: {e}")

threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("\\n".join(failures) or "THREADS OK")
raise SystemExit(1 if failures else 0)
"""


def test_threads_on_their_own_streams():
    """8 host threads, each its own stream, shape and dtype (so different configs and kernel
    images), first calls released together in a fresh process: module loading races too."""
    r = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True,
                       env=subprocess_env(), timeout=300)
    assert r.returncode == 0 and "THREADS OK" in r.stdout, r.stdout + r.stderr


@needs_two
def test_second_gpu():
    """Tensors on cuda:1 while cuda:0 is current: the op runs on cuda:1, on cuda:1's current
    stream (stalled, then x written, as in test_cuda's stream test), and leaves cuda:0 current
    and usable."""
    case = Case(n=2, c_in=3, c_out=8, h=30, w=30, groups=4)
    model, x, _ = prepared(case, "cuda:1")
    new = random_input(case, seed=4)
    new_gpu = new.to("cuda:1")
    torch.cuda.synchronize(1)
    with torch.cuda.device(0), torch.no_grad():
        with torch.cuda.device(1):
            torch.cuda._sleep(200_000_000)
        x.copy_(new_gpu)  # on cuda:1's current stream, after the sleep
        out = model(x)
        assert out.device == torch.device("cuda:1")
        assert torch.cuda.current_device() == 0
        args = forward_args(model, new)
        exp = exact(args)
        assert_close(out, exp, torch.float32)
        model0, x0, exp0 = prepared(case, "cuda:0")
        assert_close(model0(x0), exp0, torch.float32)


@needs_two
@pytest.mark.parametrize("name", ["weight", "bias", "scale", "conv_bias", "gn_weight", "gn_bias"])
def test_arguments_on_two_gpus(name):
    case = Case(n=1, c_in=3, c_out=8, h=10, w=10, groups=4)
    model, x, _ = prepared(case, "cuda:0")
    args = dict(zip(["x", "weight", "conv_bias", "bias", "scale", "gn_weight", "gn_bias"],
                    [a.detach() for a in forward_args(model, x)[:7]]))
    args[name] = args[name].to("cuda:1")
    with pytest.raises(RuntimeError, match=f"{name} is on cuda:1 but x is on cuda:0"):
        torch.ops.fusedconv.forward(*args.values(), 4)
