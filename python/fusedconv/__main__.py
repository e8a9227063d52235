"""fusedconv's command line.

    python -m fusedconv info     what this build carries: versions, archs, every variant
    python -m fusedconv bench    check against the reference, then time against PyTorch
    python -m fusedconv export   the kernels as one standalone KernelBench-style Triton file
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

import fusedconv
from fusedconv import bench


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


def cmd_export(args):
    try:
        from fusedconv import export
    except ImportError as e:  # Triton: the exported file runs on it, and it reads the kernels
        print(f"fusedconv export needs triton: {e}", file=sys.stderr)
        return 1
    if args.arch:
        arch, why = int(args.arch[3:]), "--arch"
    else:
        arch, why = export.default_arch()
    print(f"fusedconv export: sm_{arch} ({why})", file=sys.stderr)
    text = export.render(arch)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"fusedconv export: wrote {args.output}", file=sys.stderr)
    return 0


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
    b.add_argument("--padding", type=int, default=0)
    b.add_argument("--dtype", default="fp32", help="fp32, fp16, bf16 or a comma-separated list")
    b.add_argument("--precision", choices=("highest", "high", "medium"), default="highest",
                   help="torch.set_float32_matmul_precision; 'high' opts fp32 into TF32")
    b.add_argument("--suite", action="store_true", help="the shape suite instead of one shape")
    b.add_argument("--small", action="store_true", help="also the small problem's wall time per call")
    b.add_argument("--peers", help=f"comma-separated subset of {','.join(bench.PEERS)}")
    b.add_argument("--peer", action="append", default=[], metavar="FILE",
                   help="a KernelBench-style file defining ModelNew, timed beside fusedconv")
    b.add_argument("--reps", type=int, default=20, help="timed calls per peer (median reported)")
    b.add_argument("--cpu", action="store_true", help="use the CPU path even with a GPU")
    b.add_argument("--reference", metavar="PATH",
                   help="KernelBench's reference.py (default: $FUSEDCONV_REFERENCE, else "
                        "../shared/reference.py, else shared/reference.py, from the current directory)")
    b.add_argument("--json", help="write the results here")
    b.add_argument("--chart", help="write a PNG bar chart of speed-ups here")
    e = sub.add_parser("export", help="the kernels as one standalone KernelBench-style Triton file")
    e.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write it (default -: stdout)")
    e.add_argument("--arch", choices=("sm_89", "sm_90"),
                   help="the precision table's arch (default: the local GPU's, else sm_89)")
    args = p.parse_args(argv)
    if args.cmd == "export":
        return cmd_export(args)
    if args.cmd == "info":
        return cmd_info(args) or 0
    return bench.main(args)


def run(argv=None):
    """main() for a shell: output cut short by a closed pipe (`| head`) ends the command quietly,
    with the status a shell reports for a tool that SIGPIPE ended, as it ends cat."""
    try:
        status = main(argv)
        sys.stdout.flush()  # inside the try: short output meets the closed pipe only here
        return status
    except BrokenPipeError:
        # Python flushes stdout once more at exit, which would fail again and print
        # "Exception ignored ... BrokenPipeError": point it at devnull first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(run())
