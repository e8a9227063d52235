"""Memory: 10,000 calls leave torch's allocator where they found it and the host's resident
memory flat; so do calls that fail validation and calls that build an autograd graph."""
import pytest
import torch

from helpers import Case, prepared

CASE = Case(n=1, c_in=3, c_out=8, h=12, w=12, groups=4)
CALLS = 10_000
# Growth allowed over the 10,000 calls: ~150 KiB of allocator and interpreter noise measured
# on CPU; a leak of 100 bytes a call grows it by ~1.7 MiB.
RSS_SLACK = 1 << 20


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def calls(model, x, count):
    bad = x[:, :2]  # C_in mismatch: raises ValueError inside the op
    for i in range(count):
        if i % 10 == 9:
            with pytest.raises(ValueError):
                model(bad)
        elif i % 10 == 8:
            with torch.enable_grad():
                model(x)  # builds and drops a graph (inputs saved for backward)
        else:
            model(x)


def test_repeated_calls_leak_nothing(device):
    model, x, _ = prepared(CASE, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        calls(model, x, 1000)  # warm: kernels loaded, allocator and interpreter caches filled
        sync()
        before_alloc = torch.cuda.memory_allocated() if device == "cuda" else 0
        before_rss = rss()
        calls(model, x, CALLS)
        sync()
        grown = rss() - before_rss
        if device == "cuda":
            assert torch.cuda.memory_allocated() == before_alloc
    assert grown < RSS_SLACK, f"resident memory grew {grown / 1024:.0f} KiB over {CALLS} calls"
