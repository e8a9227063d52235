"""Thin Python face of torch.ops.fusedconv: the op, its build report, and a config override."""
import contextlib
import json
from typing import Optional, Sequence, Union

import torch

from .triton_kernels.rules import ALGORITHMS  # noqa: F401 (fusedconv.ALGORITHMS)

IntPair = Union[int, Sequence[int]]


def forward(x: torch.Tensor, weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
            bias: torch.Tensor, scale: torch.Tensor, gn_weight: Optional[torch.Tensor],
            gn_bias: Optional[torch.Tensor], num_groups: int, eps: float = 1e-5,
            stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1) -> torch.Tensor:
    """GroupNorm(sigmoid((conv2d(x, weight) + conv_bias + bias) * scale)); see README."""
    return torch.ops.fusedconv.forward(x, weight, conv_bias, bias, scale, gn_weight, gn_bias,
                                       num_groups, eps, _pair(stride), _pair(padding),
                                       _pair(dilation))


def _pair(v: IntPair):
    return [v, v] if isinstance(v, int) else list(v)


def build_report() -> dict:
    """Versions, archs and every compiled image's config, registers, spills, shared memory."""
    return json.loads(torch.ops.fusedconv.build_report())


@contextlib.contextmanager
def _overridden(get, set_, value):
    previous = get()
    set_(value)
    try:
        yield
    finally:
        set_(previous)


def forced_config(name: str):
    """Run the CUDA op with one block config instead of the heuristic's choice: a conv config
    (e.g. "h4w32_c16") or a resident one (e.g. "r4_m256", which implies the resident
    algorithm). For tests and tuning; process-wide, so not for concurrent use."""
    return _overridden(torch.ops.fusedconv._get_config, torch.ops.fusedconv._set_config, name)


def forced_algorithm(name: str):
    """Run the CUDA op with "materialize" (conv once, normalize the stored values),
    "recompute" (conv twice, y written once), "channels_last" (recompute over a channels-last
    copy of x) or "resident" (one launch, one program per (sample, group) holding the whole
    group; ValueError where a group does not fit).
    Process-wide, for tests and tuning."""
    return _overridden(torch.ops.fusedconv._get_algorithm, torch.ops.fusedconv._set_algorithm, name)


def plain_triton(enabled: bool = True):
    """Run the plain-Triton twins of the Gluon kernels: materialize and recompute then use
    their plain conv kernels where the Gluon FMA conv would run (exact fp32 on sm_89 images,
    the unpadded 3 x 3 kernel at unit stride). The twins are what the interpreter tests check
    and the fallback should a Gluon kernel misbehave; FUSEDCONV_PLAIN_TRITON=1 sets it for the
    whole process. Process-wide, like forced_config."""
    return _overridden(torch.ops.fusedconv._get_plain_triton, torch.ops.fusedconv._set_plain_triton, enabled)


def autotune(enabled: bool = True, cache_file: Optional[str] = None) -> None:
    """Opt into on-device autotuning: the first CUDA call for each shape key (device images,
    dtype, precision mode, shapes, stride, padding, dilation, groups) times every block config
    x algorithm once and keeps the fastest, in memory and, with `cache_file`, in a file that
    later processes read (also FUSEDCONV_AUTOTUNE=1 and FUSEDCONV_AUTOTUNE_CACHE=path). Never
    during CUDA graph capture: a capture with no cached choice uses the heuristic."""
    torch.ops.fusedconv._set_autotune(enabled, cache_file or "")


def autotune_entries() -> list:
    """[(key, config, algorithm)] chosen so far (or read from the cache file)."""
    return [tuple(line.split("\t")) for line in torch.ops.fusedconv._autotune_entries().splitlines()]


def conv_configs() -> list:
    return sorted({i["config"] for i in build_report()["images"] if i["kernel"] == "conv_stats"})


def resident_configs() -> dict:
    """{name: (channels, positions)} a resident program holds, per config."""
    return {i["config"]: (i["block_c"], i["block_m"]) for i in build_report()["images"]
            if i["kernel"] == "conv_resident"}
