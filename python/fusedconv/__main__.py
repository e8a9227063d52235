"""fusedconv's command line.

    python -m fusedconv info     what this build carries: versions, archs, every variant
    python -m fusedconv bench    check against the reference, then time against PyTorch
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

import torch

import fusedconv

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cmd_info(args):
    r = fusedconv.build_report()
    print(f"fusedconv {fusedconv.__version__}: built with triton {r['triton']}, torch {r['torch']}")
    print(f"  cubins: {', '.join(f'sm_{a}' for a in r['archs'])}; "
          f"PTX: {', '.join(f'sm_{a}' for a in r['ptx_archs']) or 'none'}")
    print(f"  running with torch {torch.__version__}; CUDA device: "
          + (f"{torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})"
             if torch.cuda.is_available() else "none"))
    if os.environ.get("FUSEDCONV_FORCE_PTX"):
        print(f"  FUSEDCONV_FORCE_PTX={os.environ['FUSEDCONV_FORCE_PTX']}: CUDA runs that PTX")
    cols = ("arch", "format", "kernel", "dtype", "mode", "config", "num_warps", "registers",
            "spill_bytes", "shared", "size")
    rows = [[str(i[c]) for c in cols] for i in r["images"]]
    widths = [max(len(c), *(len(row[j]) for row in rows)) for j, c in enumerate(cols)]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


def find_reference(path=None):
    candidates = [path, os.environ.get("FUSEDCONV_REFERENCE"), "../shared/reference.py",
                  "shared/reference.py"]
    for c in candidates:
        if c and Path(c).is_file():
            spec = importlib.util.spec_from_file_location("fusedconv_reference", c)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    raise SystemExit("fusedconv bench: cannot find the reference model; pass --reference "
                     "PATH/TO/reference.py or set FUSEDCONV_REFERENCE")


def time_ms(fn, inputs, warmup=3, reps=20):
    """Median device time of fn over `reps` calls, rotating among several input sets so the
    L2 cannot serve a repeated input."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(inputs[i % len(inputs)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_tbps():
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = time_ms(lambda t: b.copy_(t), [a], warmup=3, reps=10)
    return 2 * a.numel() / (ms * 1e-3) / 1e12


def cmd_bench(args):
    ref_mod = find_reference(args.reference)
    dtype = DTYPES[args.dtype]
    cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if cuda else "cpu"
    batch = args.batch if cuda else min(args.batch, 2)
    size = args.size if cuda else min(args.size, 64)
    torch.manual_seed(args.seed)
    init = ref_mod.get_init_inputs(args.c_in, args.c_out, args.kernel, args.groups)
    ref = ref_mod.Model(*init).to(device)
    ours = fusedconv.ModelNew(*init).to(device)
    ours.load_state_dict(ref.state_dict())
    ref_lowp = ref_mod.Model(*init).to(device, dtype)
    ref_lowp.load_state_dict(ref.state_dict())
    ours = ours.to(dtype)
    torch.set_float32_matmul_precision(args.precision)
    print(f"fusedconv bench on {torch.cuda.get_device_name() if cuda else 'CPU'}: "
          f"x [{batch}, {args.c_in}, {size}, {size}] -> {args.c_out} channels, "
          f"{args.kernel}x{args.kernel}, {args.groups} groups, {args.dtype}, "
          f"float32 matmul precision '{args.precision}'", flush=True)
    if not cuda:
        print("  no CUDA GPU here: checking the CPU path on a reduced shape and reporting the "
              "build; GPU timings need a CUDA device")

    # Correctness first, on fresh random inputs: the reference runs in fp32 on the same
    # (rounded) inputs the low-precision op sees, and in float64 for the error figure.
    x = ref_mod.get_inputs(batch, args.c_in, size, size)[0].to(device, dtype)
    with torch.no_grad():
        out = ours(x)
        ref32 = ref.float()(x.float())
        ref64 = ref_mod.Model(*init).to(device, torch.float64)
        ref64.load_state_dict(ref.state_dict())
        exact = ref64(x.double())
    # The benchmark's check: 1e-4 for accurate fp32, 1e-2 for fp16/bf16 and the TF32 opt-in.
    tol = 1e-4 if dtype == torch.float32 and args.precision == "highest" else 1e-2
    max_err = (out.double() - exact).abs().max().item()
    rel = ((out.double() - exact).norm() / exact.norm()).item()
    ok = torch.allclose(out.float(), ref32, atol=tol, rtol=tol)
    print(f"  correctness: max |err| {max_err:.2e}, rel {rel:.2e} vs float64; "
          f"allclose(atol=rtol={tol:g}) vs fp32 reference: {'yes' if ok else 'NO'}")
    result = dict(device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__,
                  fusedconv=fusedconv.__version__, shape=[batch, args.c_in, size, size],
                  c_out=args.c_out, kernel=args.kernel, groups=args.groups, dtype=args.dtype,
                  precision=args.precision, max_abs_err=max_err, rel_err=rel, allclose=ok,
                  timings_ms={})
    if cuda:
        inputs = [ref_mod.get_inputs(batch, args.c_in, size, size)[0].to(device, dtype)
                  for _ in range(3)]
        peers = {"fusedconv": ours, "eager": ref_lowp}
        with torch.no_grad():
            for name, model in peers.items():
                result["timings_ms"][name] = time_ms(model, inputs)
        bw = copy_bandwidth_tbps()
        elem = torch.finfo(dtype).bits // 8
        h_out = size - args.kernel + 1
        floor_bytes = elem * (batch * args.c_in * size * size + batch * args.c_out * h_out * h_out)
        floor_ms = floor_bytes / (bw * 1e12) * 1e3
        result.update(copy_tbps=bw, floor_ms=floor_ms)
        print(f"  copy bandwidth {bw:.2f} TB/s -> DRAM floor (read x + write y once) {floor_ms:.3f} ms")
        print(f"  {'impl':<12}{'ms':>9}{'vs eager':>10}{'floor/ms':>10}")
        for name, ms in result["timings_ms"].items():
            print(f"  {name:<12}{ms:>9.3f}{result['timings_ms']['eager'] / ms:>9.2f}x"
                  f"{100 * floor_ms / ms:>9.0f}%")
    else:
        r = fusedconv.build_report()
        spills = sum(i["spill_bytes"] > 0 for i in r["images"])
        print(f"  build: {len(r['images'])} images, cubins for "
              f"{', '.join(f'sm_{a}' for a in r['archs'])}, PTX for "
              f"{', '.join(f'sm_{a}' for a in r['ptx_archs'])}; variants that spill: {spills}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fusedconv", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    info = sub.add_parser("info", help="what this build carries")
    info.add_argument("--json", help="also write the report here")
    b = sub.add_parser("bench", help="check against the reference, then time against PyTorch")
    b.add_argument("--batch", type=int, default=128)
    b.add_argument("--c-in", type=int, default=8)
    b.add_argument("--c-out", type=int, default=32)
    b.add_argument("--size", type=int, default=256, help="input height and width")
    b.add_argument("--kernel", type=int, default=3)
    b.add_argument("--groups", type=int, default=8)
    b.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    b.add_argument("--precision", choices=("highest", "high", "medium"), default="highest",
                   help="torch.set_float32_matmul_precision; 'high' opts fp32 into TF32")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--cpu", action="store_true", help="use the CPU path even with a GPU")
    b.add_argument("--reference", help="path to reference.py (default ../shared/reference.py)")
    b.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    return {"info": cmd_info, "bench": cmd_bench}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
