"""Whether a tensor-core conv with split fp16 operands would pass the accurate fp32 contract
(allclose 1e-4 against float64), checked on the CPU before any kernel is written: x and w as
fp16 high halves plus fp16 low halves (the rounding remainders), three products (hi*hi, hi*lo,
lo*hi) accumulated in fp32, as an mma with fp32 accumulation would compute them (a product of
two fp16 values is exact in fp32). The benchmark's distributions (x uniform, w He-scaled, the
parameters standard normal), the op's epilogue in fp32, beside the plain fp32 conv and single
fp16 or bf16 operands.

    python benchmarks/split_fp16_numerics.py [--samples 2]
"""
import argparse

import torch
import torch.nn.functional as F


def split(t, scale=1.0):
    """(hi, lo) fp16 halves of t * scale, as fp32 tensors."""
    hi = (t * scale).half().float()
    return hi, (t * scale - hi).half().float()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    groups = 8
    x = torch.rand(a.samples, 8, 256, 256)
    w = torch.randn(32, 8, 3, 3) * (2.0 / 72) ** 0.5
    conv_bias, bias, scale, gamma, beta = [torch.randn(32) for _ in range(5)]

    def epilogue(z):
        z = torch.sigmoid((z + bias.view(-1, 1, 1).to(z)) * scale.view(-1, 1, 1).to(z))
        return F.group_norm(z, groups, gamma.to(z), beta.to(z), 1e-5)

    ref = epilogue(F.conv2d(x.double(), w.double(), conv_bias.double()))
    results = {"fp32 conv": F.conv2d(x, w, conv_bias)}
    for w_scale in (1.0, 2.0 ** 8):  # scaling w keeps its low halves out of fp16's subnormals
        (xh, xl), (wh, wl) = split(x), split(w, w_scale)
        z = (F.conv2d(xh, wh) + F.conv2d(xh, wl) + F.conv2d(xl, wh)) / w_scale + conv_bias.view(-1, 1, 1)
        results[f"3 fp16 products, w x {w_scale:g}"] = z
    results["1 fp16 product"] = F.conv2d(x.half().float(), w.half().float(), conv_bias)
    results["1 bf16 product"] = F.conv2d(x.bfloat16().float(), w.bfloat16().float(), conv_bias)
    for label, z in results.items():
        err = (epilogue(z).double() - ref).abs().max().item()
        print(f"{label:26s} max |y - float64| {err:.2e}  within 1e-4: {'yes' if err < 1e-4 else 'no'}")


if __name__ == "__main__":
    main()
