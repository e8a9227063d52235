"""Reference model, random cases and comparisons shared by the tests."""
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import fusedconv
from fusedconv.bench import load_reference
from fusedconv.triton_kernels import rules

_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (developers, CI); shared/ inside it where a copy puts it there.
REFERENCE_PATH = next((p for p in (_ROOT.parent / "shared" / "reference.py", _ROOT / "shared" / "reference.py")
                       if p.is_file()), _ROOT.parent / "shared" / "reference.py")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


reference = load_reference(REFERENCE_PATH)


@dataclass(frozen=True)
class Case:
    n: int = 2
    c_in: int = 3
    c_out: int = 8
    h: int = 11
    w: int = 13
    kernel: tuple = (3, 3)
    groups: int = 4
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)

    def __str__(self):
        return (f"n{self.n}_ci{self.c_in}_co{self.c_out}_{self.h}x{self.w}_k{self.kernel[0]}x{self.kernel[1]}"
                f"_g{self.groups}_s{self.stride[0]}{self.stride[1]}_p{self.padding[0]}{self.padding[1]}"
                f"_d{self.dilation[0]}{self.dilation[1]}")


def random_cases(count, seed):
    """Odd sizes, kernels 1..5 and rectangular, groups from 1 to C_out, stride, padding,
    dilation; C_out past 32 so channel blocks are ragged, images past one position tile."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        c_out = rng.choice([1, 3, 6, 8, 12, 20, 32, 40, 48])
        groups = rng.choice([g for g in range(1, c_out + 1) if c_out % g == 0])
        kernel = (rng.randint(1, 5), rng.randint(1, 5))
        dilation = (rng.randint(1, 2), rng.randint(1, 2))
        padding = (rng.randint(0, 2), rng.randint(0, 2))
        stride = (rng.randint(1, 2), rng.randint(1, 2))
        h, w = rng.choice([5, 7, 9, 13, 17, 23, 31]), rng.choice([5, 8, 11, 19, 29, 37])
        case = Case(rng.randint(1, 3), rng.randint(1, 5), c_out, h, w, kernel, groups, stride, padding, dilation)
        if all((k - 1) * d + 1 <= s + 2 * p for k, d, s, p in zip(kernel, dilation, (h, w), padding)):
            cases.append(case)
    return cases


def reference_model(case, seed=0):
    """The shared reference Model, its conv given the case's geometry, with random GroupNorm
    affine parameters so they are not trivially 1 and 0."""
    torch.manual_seed(seed)
    m = reference.Model(*reference.get_init_inputs(case.c_in, case.c_out, case.kernel, case.groups))
    m.conv.stride, m.conv.padding, m.conv.dilation = case.stride, case.padding, case.dilation
    with torch.no_grad():
        m.group_norm.weight.normal_()
        m.group_norm.bias.normal_()
    return m


def fused_model(case, ref_model):
    m = fusedconv.FusedConvSigmoidGroupNorm(case.c_in, case.c_out, case.kernel, case.groups,
                                            stride=case.stride, padding=case.padding,
                                            dilation=case.dilation)
    m.load_state_dict(ref_model.state_dict())
    return m


def random_input(case, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(case.n, case.c_in, case.h, case.w, generator=g)  # the benchmark's recipe


def poison_cuda_allocator(nbytes):
    """Fill the caching allocator's next blocks with NaN, so an output element the op
    forgets to write shows up as NaN instead of as stale plausible data."""
    if torch.cuda.is_available():
        # Two blocks alive at once, so both the output's and the workspace's are poisoned.
        for block in [torch.empty(nbytes // 4 + 1, device="cuda") for _ in range(2)]:
            block.fill_(float("nan"))


def expected(case, x, ref_model, dtype):
    """The reference in float64 on exactly what the op sees: inputs and parameters rounded to
    `dtype` first."""
    m = reference_model(case)
    m.load_state_dict(ref_model.state_dict())
    m = m.to(dtype).double()
    with torch.no_grad():
        return m(x.to(dtype).double())


def prepared(case, device="cpu", dtype=torch.float32):
    """(fused module, input, float64 expectation) for a case, on `device` in `dtype`."""
    ref = reference_model(case)
    model = fused_model(case, ref).to(device, dtype)
    x = random_input(case).to(device, dtype)
    return model, x, expected(case, x.cpu(), ref, dtype)


def assert_matches(out, exp, dtype):
    tol = TOLERANCE[dtype]
    out = out.detach().double().cpu()
    assert out.shape == exp.shape
    assert torch.isfinite(out).all(), "non-finite output (unwritten or NaN)"
    err = (out - exp).abs().max().item()
    assert torch.allclose(out, exp, atol=tol, rtol=tol), f"max |err| {err:.3e} > tol {tol}"
    return err


def output_size(case):
    """(H_out, W_out) of a case's conv."""
    return tuple(rules.output_size(*dim) for dim in
                 zip((case.h, case.w), case.padding, case.dilation, case.kernel, case.stride))


def algorithms_for(model, x):
    """The CUDA algorithms that can run this call: "resident" only where one of its configs
    holds a whole group (forcing it elsewhere is a ValueError, tested on its own)."""
    conv = model.conv
    h_out, w_out = output_size(Case(h=x.shape[2], w=x.shape[3], kernel=conv.kernel_size, stride=conv.stride,
                                    padding=conv.padding, dilation=conv.dilation))
    cpg = conv.out_channels // model.group_norm.num_groups
    fits = any(rules.resident_fits(c, m, cpg, h_out * w_out) for c, m in fusedconv.resident_configs().values())
    return tuple(a for a in fusedconv.ALGORITHMS if a != "resident" or fits)


def fresh_env(*drop, tests_on_path=False, **extra):
    """os.environ for a fresh process, without conftest's TRITON_INTERPRET (under it @triton.jit
    gives interpreter functions, which neither a GPU run nor the AOT compiler can use) and
    the variables named in `drop`; with tests/ first on PYTHONPATH where the process imports
    helpers; plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", *drop)}
    if tests_on_path:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent)]
                                            + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


def forward_args(model, x):
    """The op's positional arguments for a FusedConvSigmoidGroupNorm module."""
    c, gn = model.conv, model.group_norm
    return (x, c.weight, c.bias, model.bias, model.scale, gn.weight, gn.bias, gn.num_groups,
            gn.eps, list(c.stride), list(c.padding), list(c.dilation))


__all__ = ["Case", "DTYPES", "TOLERANCE", "reference", "random_cases", "reference_model",
           "fused_model", "random_input", "expected", "prepared", "assert_matches", "poison_cuda_allocator",
           "forward_args", "algorithms_for", "output_size", "fresh_env", "replace"]
