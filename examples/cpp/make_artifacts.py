"""Writes what the C++ example runs: a TorchScript model whose forward calls
torch.ops.fusedconv.forward, an input, and the reference model's output on that input.

    python3 examples/cpp/make_artifacts.py OUT_DIR [--reference PATH/TO/reference.py]

    OUT_DIR/model.pt      torch.jit.save of ScriptableFusedConv, weights from the reference Model
    OUT_DIR/input.pt      torch.save of the fp32 input
    OUT_DIR/expected.pt   torch.save of the reference Model's output, computed in float64
"""
import argparse
import os
import sys
from pathlib import Path
from typing import List

import torch
from torch import nn

import fusedconv
from fusedconv import bench

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference.py"
C_IN, C_OUT, KERNEL, GROUPS = 8, 32, 3, 8
# Off the op's defaults, so a wrapper that dropped the geometry would give wrong shapes.
STRIDE, PADDING = (2, 1), (1, 1)
BATCH, SIZE = 2, 33
TOLERANCE = 1e-4  # fp32 against the float64 reference, as the benchmark checks


class ScriptableFusedConv(nn.Module):
    """fusedconv.FusedConvSigmoidGroupNorm in a form torch.jit.script accepts.

    fusedconv.forward takes int-or-pair geometry (a Union that TorchScript rejects), so this
    calls the op directly with List[int] attributes; num_groups and eps are copied too, since
    TorchScript inlines a submodule's constants instead of exposing them. It shares the
    module's submodules and parameter names, so state_dicts move between the two and the
    reference Model.
    """

    num_groups: int
    eps: float
    stride: List[int]
    padding: List[int]
    dilation: List[int]

    def __init__(self, module: fusedconv.FusedConvSigmoidGroupNorm):
        super().__init__()
        self.conv, self.group_norm = module.conv, module.group_norm
        self.bias, self.scale = module.bias, module.scale
        self.num_groups, self.eps = module.group_norm.num_groups, module.group_norm.eps
        self.stride = list(module.conv.stride)
        self.padding = list(module.conv.padding)
        self.dilation = list(module.conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, gn = self.conv, self.group_norm
        return torch.ops.fusedconv.forward(x, conv.weight, conv.bias, self.bias, self.scale,
                                           gn.weight, gn.bias, self.num_groups, self.eps,
                                           self.stride, self.padding, self.dilation)


def load_reference(path=None):
    """reference.py from `path`, else $FUSEDCONV_REFERENCE, else ../shared beside the checkout,
    else where `fusedconv bench` looks (from the working directory)."""
    if not path and not os.environ.get("FUSEDCONV_REFERENCE") and REFERENCE.is_file():
        path = REFERENCE
    return bench.load_reference(path)


def build_models(reference, seed=0):
    """The reference Model (conv geometry set as above, random GroupNorm affine so it is not
    1 and 0) and a fusedconv module holding the same weights."""
    torch.manual_seed(seed)
    ref = reference.Model(*reference.get_init_inputs(C_IN, C_OUT, KERNEL, GROUPS))
    ref.conv.stride, ref.conv.padding = STRIDE, PADDING
    with torch.no_grad():
        ref.group_norm.weight.normal_()
        ref.group_norm.bias.normal_()
    fused = fusedconv.FusedConvSigmoidGroupNorm(C_IN, C_OUT, KERNEL, GROUPS, stride=STRIDE,
                                                padding=PADDING)
    fused.load_state_dict(ref.state_dict())
    return ref.eval(), fused.eval()


def make(out_dir, reference_path=None):
    reference = load_reference(reference_path)
    ref, fused = build_models(reference)
    scripted = torch.jit.script(ScriptableFusedConv(fused))
    x = reference.get_inputs(BATCH, C_IN, SIZE, SIZE)[0]
    with torch.no_grad():
        expected = ref.double()(x.double())
        out = scripted(x).double()
    # Checked here too, so that a failure in C++ points at the C++ side.
    if not torch.allclose(out, expected, atol=TOLERANCE, rtol=TOLERANCE):
        raise SystemExit(f"make_artifacts: the scripted model is off by "
                         f"{(out - expected).abs().max().item():.2e} in Python already")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.pt" for name in ("model", "input", "expected")}
    scripted.save(str(paths["model"]))
    torch.save(x, paths["input"])
    torch.save(expected, paths["expected"])
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--reference", type=Path,
                   help=f"reference.py (default $FUSEDCONV_REFERENCE, else {REFERENCE})")
    args = p.parse_args(argv)
    for name, path in make(args.out_dir, args.reference).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    sys.exit(main())
