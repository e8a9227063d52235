"""`python -m fusedconv bench`: correctness first, then device-event timings of fusedconv and its
peers on fresh random data, against the DRAM floor measured in the same run."""
import importlib.util
import json
import math
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import fusedconv

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PEERS = ("fusedconv", "fusedconv-jit", "eager", "eager-no-tf32", "compile", "compile-max")
# cuDNN runs some fp32 convs in TF32 by default (allow_tf32=True): eager is then fast and
# ~3e-3 off float64 (the UNet shapes), outside the 1e-4 that fusedconv's accurate mode keeps.
# "eager-no-tf32" is eager at that accuracy, so each fp32 ratio has a like-for-like peer; it is
# timed in fp32 only (TF32 does not touch fp16/bf16).


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int = 128
    c_in: int = 8
    c_out: int = 32
    size: int = 256
    kernel: int = 3
    groups: int = 8
    padding: int = 0

    @property
    def out_size(self):
        return self.size + 2 * self.padding - self.kernel + 1


BENCHMARK = Shape("benchmark")
SMALL = Shape("small", batch=1, size=32)
SUITE = (
    BENCHMARK, Shape("batch1", batch=1), Shape("batch8", batch=8), Shape("batch32", batch=32),
    Shape("batch256", batch=256), Shape("input384", batch=32, size=384),
    Shape("unet64-64px", batch=16, c_in=64, c_out=64, size=64, groups=32, padding=1),
    Shape("unet64-128px", batch=16, c_in=64, c_out=64, size=128, groups=32, padding=1),
    Shape("unet128-64px", batch=16, c_in=128, c_out=128, size=64, groups=32, padding=1),
    Shape("unet128-128px", batch=16, c_in=128, c_out=128, size=128, groups=32, padding=1),
    Shape("kernel5x5", batch=32, kernel=5), Shape("kernel1x1", batch=32, kernel=1),
)


@dataclass
class Row:
    peer: str
    ms: float = float("nan")
    max_abs_err: float = float("nan")
    allclose: bool = False
    note: str = ""


@dataclass
class Result:
    shape: Shape
    dtype: str
    precision: str
    floor_ms: float = float("nan")
    rows: list = field(default_factory=list)


def log(msg):
    print(msg, flush=True)


# Where the KernelBench reference model is looked for when neither --reference nor
# FUSEDCONV_REFERENCE names it: beside a checkout (../shared) or inside one (shared/), relative to
# the current directory, since the wheel carries bench but not the reference.
REFERENCE_DEFAULTS = ("../shared/reference.py", "shared/reference.py")


def find_reference(path=None):
    """(path, why) of the reference model: `path` (--reference), else $FUSEDCONV_REFERENCE, else
    the first of REFERENCE_DEFAULTS that exists. A file named explicitly must exist: falling
    back past it would time against a model the caller did not choose."""
    env = os.environ.get("FUSEDCONV_REFERENCE")
    for given, why in ((path, "--reference"), (env, "FUSEDCONV_REFERENCE")):
        if given:
            if not Path(given).is_file():
                raise FileNotFoundError(f"fusedconv bench: {why} {given}: no such file")
            return _absolute(given), why
    for c in REFERENCE_DEFAULTS:
        if Path(c).is_file():
            return _absolute(c), "default"
    tried = ", ".join(str(_absolute(c)) for c in REFERENCE_DEFAULTS)
    raise FileNotFoundError(
        "fusedconv bench: cannot find the reference model (KernelBench's reference.py); tried "
        f"--reference (not given), FUSEDCONV_REFERENCE (not set), {tried}. Pass --reference "
        "PATH/TO/reference.py or set FUSEDCONV_REFERENCE")


def _absolute(path):
    # abspath, not resolve(): ".." goes, but a symlinked ../shared is shown as the user has it.
    return Path(os.path.abspath(path))


def load_reference(path=None):
    """The reference model's module, from find_reference(path)."""
    return _load_module(find_reference(path)[0], "fusedconv_reference")


def _load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def time_ms(fn, inputs, warmup=3, reps=20):
    """Median device time of fn, rotating among several input sets so the L2 cannot serve a
    repeated input."""
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


def wall_us_per_call(fn, x, calls=1000):
    """Host wall time per call over back-to-back calls: what launch overhead costs."""
    for _ in range(20):
        fn(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls * 1e6


def build_peers(names, ref_mod, shape, dtype, device, peer_files):
    """name -> (model, note). Every model holds the same parameters (the reference's)."""
    torch.manual_seed(0)
    init = ref_mod.get_init_inputs(shape.c_in, shape.c_out, shape.kernel, shape.groups)
    ref = ref_mod.Model(*init)
    ref.conv.padding = (shape.padding, shape.padding)
    ours = fusedconv.FusedConvSigmoidGroupNorm(shape.c_in, shape.c_out, shape.kernel, shape.groups,
                                               padding=shape.padding)
    ours.load_state_dict(ref.state_dict())
    peers = {}
    for name in names:
        if name == "fusedconv":
            peers[name] = (ours.to(device, dtype), "AOT cubins, C++ launch")
        elif name == "fusedconv-jit":
            try:
                from . import triton_jit
            except ImportError as e:
                peers[name] = (None, f"triton unavailable: {e}")
                continue
            peers[name] = (triton_jit.JitModel(ours.to(device, dtype)), "same kernels, Triton JIT launch")
        elif name == "eager":
            peers[name] = (_copy_of(ref, ref_mod, init, shape).to(device, dtype), "PyTorch eager")
        elif name == "eager-no-tf32":
            if dtype == torch.float32:
                peers[name] = (_NoCudnnTF32(_copy_of(ref, ref_mod, init, shape).to(device, dtype)),
                               "PyTorch eager, cuDNN TF32 off")
        elif name in ("compile", "compile-max"):
            mode = None if name == "compile" else "max-autotune-no-cudagraphs"
            model = _copy_of(ref, ref_mod, init, shape).to(device, dtype)
            peers[name] = (torch.compile(model, mode=mode), f"torch.compile mode={mode or 'default'}")
    for path in peer_files:
        mod = _load_module(path, f"peer_{Path(path).stem}")
        model = mod.ModelNew(*init)
        model.load_state_dict(ref.state_dict())
        if shape.padding:
            model.conv.padding = (shape.padding, shape.padding)
        peers[f"peer:{Path(path).stem}"] = (model.to(device, dtype), str(path))
    return peers


class _NoCudnnTF32(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        before = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            return self.model(x)
        finally:
            torch.backends.cudnn.allow_tf32 = before


def _copy_of(ref, ref_mod, init, shape):
    m = ref_mod.Model(*init)
    m.conv.padding = (shape.padding, shape.padding)
    m.load_state_dict(ref.state_dict())
    return m


def run_shape(ref_mod, shape, dtype_name, precision, peer_names, peer_files, reps, cuda):
    dtype = DTYPES[dtype_name]
    device = "cuda" if cuda else "cpu"
    torch.set_float32_matmul_precision(precision)
    result = Result(shape, dtype_name, precision)
    peers = build_peers(peer_names, ref_mod, shape, dtype, device, peer_files)
    # Correctness first, on fresh random inputs (the benchmark's uniform [0, 1) recipe): each
    # peer against the reference in float64 on the same rounded inputs and parameters, and the
    # benchmark's check: allclose against the reference module in fp32.
    x = ref_mod.get_inputs(shape.batch, shape.c_in, shape.size, shape.size)[0].to(device, dtype)
    exact_model = build_peers(["eager"], ref_mod, shape, dtype, device, [])["eager"][0]
    # cuDNN runs fp32 convs in TF32 by default where it judges that faster (the UNet shapes:
    # 3e-3 off float64), so the fp32 reference is taken with TF32 off.
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            exact = exact_model.double()(x.double())
            ref32 = exact_model.float()(x.float())
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    del exact_model
    tol = 1e-4 if dtype == torch.float32 and precision == "highest" else 1e-2
    inputs = [x] + [ref_mod.get_inputs(shape.batch, shape.c_in, shape.size, shape.size)[0].to(device, dtype)
                    for _ in range(2 if cuda else 0)]
    for name, (model, note) in peers.items():
        row = Row(name, note=note)
        result.rows.append(row)
        if model is None:
            continue
        try:
            t0 = time.time()
            with torch.no_grad():
                out = model(x)
                if cuda:
                    torch.cuda.synchronize()
            if time.time() - t0 > 2:
                log(f"    {name}: first call (compilation) took {time.time() - t0:.0f} s")
            row.max_abs_err = (out.double() - exact).abs().max().item()
            row.allclose = bool(torch.allclose(out.float(), ref32, atol=tol, rtol=tol))
            del out
            if cuda:
                with torch.no_grad():
                    row.ms = time_ms(model, inputs, reps=reps)
        except Exception as e:  # a peer that fails is reported, not fatal
            row.note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        log(f"    {name:<18} {fmt(row.ms, '9.3f', ' ms')}  max|err| {fmt(row.max_abs_err, '.1e')}  "
            f"allclose({tol:g}) {'yes' if row.allclose else 'NO'}")
    return result


def measured(v):
    return v is not None and math.isfinite(v)


def fmt(v, spec, suffix=""):
    """v formatted, or n/a at the same width where it was not measured (NaN: a CPU run, a
    peer that failed); the suffix ("x", "%") belongs to the number, so n/a goes without it."""
    width = int(re.match(r"\d*", spec).group() or 0) + len(suffix)
    return f"{v:{spec}}{suffix}" if measured(v) else "n/a".rjust(width)


def ratio(a, b):
    return a / b if measured(a) and measured(b) and b > 0 else float("nan")


def print_table(results, bw):
    log("")
    log(f"{'shape':<19}{'dtype':<6}{'peer':<22}{'ms':>9}{'x eager':>9}{'% floor':>9}{'max|err|':>10}  allclose")
    for r in results:
        eager = next((row.ms for row in r.rows if row.peer == "eager"), float("nan"))
        for row in r.rows:
            log(f"{r.shape.name:<19}{r.dtype:<6}{row.peer:<22}{fmt(row.ms, '9.3f')}"
                f"{fmt(ratio(eager, row.ms), '8.2f', 'x')}{fmt(100 * ratio(r.floor_ms, row.ms), '8.0f', '%')}"
                f"{fmt(row.max_abs_err, '10.1e')}  {'yes' if row.allclose else 'NO'}"
                + (f"  ({row.note})" if row.note.startswith("failed") or row.note.startswith("triton") else ""))
    if bw:
        log(f"copy bandwidth {bw:.2f} TB/s; floor = read x once + write y once at that rate")


@dataclass(frozen=True)
class Bar:
    speedup: float  # over eager; 0 where the peer was not timed
    fails: bool     # failed the allclose check: its speed is not an honest speed-up


def chart_bars(results):
    """(labels, {peer: [Bar or None per label]}) for the chart: one label per result with an
    eager time, None where a peer has no row in that result. A peer that fails the allclose
    check (torch.compile and the fp32 seed can) is marked, so it does not read as a win."""
    timed = [(r, next((row.ms for row in r.rows if row.peer == "eager"), float("nan"))) for r in results]
    timed = [(r, eager) for r, eager in timed if measured(eager)]
    labels = [f"{r.shape.name}\n{r.dtype}" for r, _ in timed]
    series = {}
    for j, (r, eager) in enumerate(timed):
        for row in r.rows:
            bars = series.setdefault(row.peer, [None] * len(timed))
            speedup = ratio(eager, row.ms)
            bars[j] = Bar(speedup if measured(speedup) else 0.0, not row.allclose)
    return labels, series


def chart(results, path):
    try:
        fig = draw_chart(results)
    except ImportError:
        log(f"matplotlib is not installed: no chart at {path}")
        return
    fig.savefig(path, dpi=120)
    log(f"chart: {path}")


def draw_chart(results):
    """The speed-up chart as a matplotlib Figure; ImportError without matplotlib."""
    # A bare Figure, not pyplot: no display backend to pick and no global figure left open.
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    labels, series = chart_bars(results)
    fig = Figure(figsize=(max(6, 1.2 * len(labels) * max(1, len(series)) / 3), 4))
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    # Legend swatches of their own: a peer's first bar may be a hatched one.
    handles = []
    for i, (peer, bars) in enumerate(series.items()):
        color = f"C{i % 10}"
        handles.append(Patch(facecolor=color, label=peer))
        for j, bar in enumerate(bars):
            if bar is None:
                continue
            (patch,) = ax.bar(j + i * width, bar.speedup, width, color=color)
            if bar.fails:
                patch.set(hatch="///", alpha=0.45, edgecolor="black")
    if any(bar and bar.fails for bars in series.values() for bar in bars):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///",
                             label="fails allclose (not a valid speed-up)"))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, fontsize=7)
    ax.set_ylabel("speed-up over eager PyTorch")
    ax.axhline(1, color="gray", lw=0.5)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def main(args):
    try:
        ref_path, why = find_reference(args.reference)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    log(f"fusedconv bench: reference model {ref_path} ({why})")
    ref_mod = _load_module(ref_path, "fusedconv_reference")
    cuda = torch.cuda.is_available() and not args.cpu
    if cuda:
        log(f"fusedconv bench on {torch.cuda.get_device_name()} "
            f"(torch {torch.__version__}, fusedconv {fusedconv.__version__})")
    else:
        log("fusedconv bench: no CUDA GPU here. Measurable: the CPU path's correctness against "
            "the reference on a reduced shape, and the build report. Not measurable: GPU timings, "
            "the peers' speed, the DRAM floor.")
    if args.suite:
        shapes = list(SUITE)
    else:
        shapes = [Shape("custom" if (args.batch, args.size, args.c_in, args.c_out, args.kernel, args.groups,
                                     args.padding) != (128, 256, 8, 32, 3, 8, 0) else "benchmark",
                        args.batch, args.c_in, args.c_out, args.size, args.kernel, args.groups, args.padding)]
    if not cuda:
        shapes = [Shape(s.name + "-reduced", min(s.batch, 2), s.c_in, s.c_out, min(s.size, 48), s.kernel,
                        s.groups, s.padding) for s in shapes[:1]]
    peer_names = [p for p in (args.peers.split(",") if args.peers else PEERS) if p]
    unknown = [p for p in peer_names if p not in PEERS]
    if unknown:
        raise SystemExit(f"fusedconv bench: --peers {','.join(unknown)}: not one of {','.join(PEERS)} "
                         "(a file of your own goes in --peer FILE)")
    if args.suite and not args.peers:
        peer_names = ["fusedconv", "eager", "eager-no-tf32"]  # torch.compile per shape would take minutes
    if not cuda:
        peer_names = ["fusedconv", "eager"]
    bw = copy_bandwidth_tbps() if cuda else None
    results = []
    ok = True
    for shape in shapes:
        for dtype_name in args.dtype.split(","):
            log(f"  {shape.name}: x [{shape.batch}, {shape.c_in}, {shape.size}, {shape.size}] -> "
                f"{shape.c_out} ch, {shape.kernel}x{shape.kernel}, pad {shape.padding}, "
                f"{shape.groups} groups, {dtype_name}, precision '{args.precision}'")
            r = run_shape(ref_mod, shape, dtype_name, args.precision, peer_names, args.peer, args.reps, cuda)
            if bw:
                elem = torch.finfo(DTYPES[dtype_name]).bits // 8
                nbytes = elem * shape.batch * (shape.c_in * shape.size ** 2 + shape.c_out * shape.out_size ** 2)
                r.floor_ms = nbytes / (bw * 1e12) * 1e3
            ok &= all(row.allclose for row in r.rows if row.peer == "fusedconv")
            results.append(r)
    torch.set_float32_matmul_precision("highest")
    small = {}
    if cuda and (args.suite or args.small):
        log(f"  small problem {SMALL.batch}x{SMALL.c_in}x{SMALL.size}x{SMALL.size}: wall time per call over 1000 calls")
        peers = build_peers(["fusedconv", "eager"], ref_mod, SMALL, torch.float32, "cuda", args.peer)
        x = ref_mod.get_inputs(SMALL.batch, SMALL.c_in, SMALL.size, SMALL.size)[0].cuda()
        with torch.no_grad():
            for name, (model, _) in peers.items():
                small[name] = wall_us_per_call(model, x)
                log(f"    {name:<18} {small[name]:7.1f} us per call")
            # The host's own floor: one aten launch on a tensor of the output's size, same process.
            out = torch.rand(SMALL.batch, SMALL.c_out, SMALL.out_size, SMALL.out_size, device="cuda")
            small["torch.sigmoid"] = wall_us_per_call(torch.sigmoid, out)
            log(f"    {'torch.sigmoid':<18} {small['torch.sigmoid']:7.1f} us per call (one aten launch on the "
                "output's size: the host's floor)")
            if "fusedconv" in small:
                log(f"    fusedconv / torch.sigmoid: {small['fusedconv'] / small['torch.sigmoid']:.2f}x")
    print_table(results, bw)
    if not cuda:
        rep = fusedconv.build_report()
        log(f"build: {len(rep['images'])} images; cubins for {', '.join(f'sm_{a}' for a in rep['archs'])}; "
            f"PTX for {', '.join(f'sm_{a}' for a in rep['ptx_archs'])}; "
            f"variants that spill: {sum(i['spill_bytes'] > 0 for i in rep['images'])}")
    if args.json:
        payload = dict(device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__,
                       fusedconv=fusedconv.__version__, copy_tbps=bw, small_us_per_call=small,
                       results=[dict(shape=asdict(r.shape), dtype=r.dtype, precision=r.precision,
                                     floor_ms=r.floor_ms, rows=[asdict(row) for row in r.rows])
                                for r in results])
        Path(args.json).write_text(json.dumps(payload, indent=1))
        log(f"json: {args.json}")
    if args.chart and cuda:
        chart(results, args.chart)
    return 0 if ok else 1
