"""The command line: the README's main job on this machine, and the info report."""
import fcntl
import json
import os
import subprocess
import sys

import pytest
import torch

from fusedconv import bench
from helpers import REFERENCE_PATH


def test_bench_checks_the_reference_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "fusedconv", "bench", "--reference", str(REFERENCE_PATH),
                        "--batch", "2", "--size", "24", "--dtype", "fp32,bf16", "--json", str(out),
                        "--reps", "3"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == f"fusedconv bench: reference model {os.path.abspath(REFERENCE_PATH)} (--reference)"
    payload = json.loads(out.read_text())
    rows = {(res["dtype"], row["peer"]): row for res in payload["results"] for row in res["rows"]}
    assert rows[("fp32", "fusedconv")]["allclose"] and rows[("bf16", "fusedconv")]["allclose"]
    assert rows[("fp32", "fusedconv")]["max_abs_err"] < 1e-4
    if not torch.cuda.is_available():
        assert "no CUDA GPU here" in r.stdout and "Not measurable" in r.stdout
        # Nothing is timed on CPU: the table says so instead of printing NaN.
        assert "nan" not in r.stdout.lower() and "n/a" in r.stdout, r.stdout


def test_bench_fails_on_a_wrong_peer_free_result(tmp_path):
    """The exit status reflects fusedconv's correctness: a reference whose model differs (scale
    doubled) must make the check fail."""
    wrong = tmp_path / "reference.py"
    wrong.write_text(REFERENCE_PATH.read_text().replace("x = x * self.scale", "x = x * self.scale * 2"))
    r = subprocess.run([sys.executable, "-m", "fusedconv", "bench", "--reference", str(wrong),
                        "--batch", "1", "--size", "16", "--reps", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NO" in r.stdout


def test_bench_refuses_an_unknown_peer_name():
    r = subprocess.run([sys.executable, "-m", "fusedconv", "bench", "--reference", str(REFERENCE_PATH),
                        "--peers", "fusedconv,eagre"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "--peers eagre" in r.stderr and "not one of" in r.stderr


def test_eager_no_tf32_peer_runs_eager_with_cudnn_tf32_off_and_restores_it():
    """The like-for-like fp32 peer: the reference model itself, called with cuDNN's TF32 off
    (the flag as the model sees it during the call), the flag restored afterwards, and no such
    peer in half precision, where TF32 plays no part."""
    from fusedconv import bench

    ref_mod = bench.load_reference(str(REFERENCE_PATH))
    shape = bench.Shape("tiny", batch=1, size=12)
    peers = bench.build_peers(["eager", "eager-no-tf32"], ref_mod, shape, torch.float32, "cpu", [])
    eager, _ = peers["eager"]
    no_tf32, note = peers["eager-no-tf32"]
    assert "TF32 off" in note
    seen = []
    no_tf32.model.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cudnn.allow_tf32))
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        x = torch.rand(1, shape.c_in, shape.size, shape.size)
        with torch.no_grad():
            assert torch.equal(no_tf32(x), eager(x))
        assert seen == [False] and torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32 = before
    assert "eager-no-tf32" not in bench.build_peers(["eager-no-tf32"], ref_mod, shape, torch.bfloat16, "cpu", [])


def _info_into(write_fd):
    return subprocess.run([sys.executable, "-m", "fusedconv", "info"], stdout=write_fd,
                          stderr=subprocess.PIPE, text=True, timeout=300)


def test_info_exits_quietly_when_the_reader_is_gone():
    """`python -m fusedconv info | head` with head gone before the first write: every write
    fails, and the command ends with 141 (128 + SIGPIPE), as cat does, not with a traceback."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        r = _info_into(write_fd)
    finally:
        os.close(write_fd)
    assert r.returncode == 141, r.stderr
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr


def test_info_piped_to_a_reader_of_one_line():
    """`python -m fusedconv info | head -1`: the reader takes the first line and closes. The
    pipe is shrunk to one page so the report (tens of kB) cannot fit in it and the pipe must
    break mid-report whatever the timing."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    child = subprocess.Popen([sys.executable, "-m", "fusedconv", "info"], stdout=write_fd,
                             stderr=subprocess.PIPE, text=True)
    os.close(write_fd)
    with os.fdopen(read_fd) as reader:
        first = reader.readline()
    stderr = child.communicate(timeout=300)[1]
    assert first.startswith("fusedconv "), first
    assert child.returncode == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def _result(rows, floor_ms=float("nan"), name="tiny", dtype="fp32"):
    return bench.Result(bench.Shape(name, batch=1, size=12), dtype, "highest", floor_ms, rows)


def test_table_prints_na_for_what_was_not_measured(capsys):
    """A CPU run times nothing and a failed peer has no error: n/a, not nan ms, nanx, nan%."""
    cpu = _result([bench.Row("fusedconv", max_abs_err=3e-7, allclose=True), bench.Row("eager", allclose=True)],
                  name="cpu")
    gpu = _result([bench.Row("fusedconv", ms=0.5, max_abs_err=3e-7, allclose=True),
                   bench.Row("eager", ms=1.0, max_abs_err=2e-7, allclose=True),
                   bench.Row("compile", note="failed: RuntimeError: boom")], floor_ms=0.25)
    bench.print_table([cpu, gpu], bw=None)
    out = capsys.readouterr().out
    assert "nan" not in out.lower(), out
    lines = {(line.split()[0], line.split()[2]): line for line in out.splitlines()[2:]}
    assert lines[("cpu", "fusedconv")].split()[3:7] == ["n/a", "n/a", "n/a", "3.0e-07"]
    assert lines[("tiny", "fusedconv")].split()[3:6] == ["0.500", "2.00x", "50%"]
    assert lines[("tiny", "compile")].split()[3:8] == ["n/a", "n/a", "n/a", "n/a", "NO"]


def test_chart_marks_peers_that_fail_allclose():
    """The chart's bars: a peer that fails the accuracy check is marked as such in every shape it
    fails, even when faster than eager; a peer without a row in one result leaves a gap there
    instead of shifting its later bars; a result without an eager time gets no group."""
    fp32 = _result([bench.Row("eager", ms=2.0, allclose=True), bench.Row("fusedconv", ms=1.0, allclose=True),
                    bench.Row("eager-no-tf32", ms=4.0, allclose=True), bench.Row("compile", ms=0.5, allclose=False)])
    bf16 = _result([bench.Row("eager", ms=2.0, allclose=True), bench.Row("fusedconv", ms=0.8, allclose=True),
                    bench.Row("compile", ms=1.0, allclose=True)], dtype="bf16")
    cpu = _result([bench.Row("eager", allclose=True), bench.Row("fusedconv", allclose=True)], name="cpu")
    labels, series = bench.chart_bars([fp32, bf16, cpu])
    assert labels == ["tiny\nfp32", "tiny\nbf16"]
    assert series["compile"] == [bench.Bar(4.0, True), bench.Bar(2.0, False)]
    assert series["fusedconv"] == [bench.Bar(2.0, False), bench.Bar(2.5, False)]
    assert series["eager-no-tf32"] == [bench.Bar(0.5, False), None]
    failed = _result([bench.Row("eager", ms=1.0, allclose=True), bench.Row("seed", allclose=False, note="failed: x")])
    assert bench.chart_bars([failed])[1]["seed"] == [bench.Bar(0.0, True)]


def test_chart_draws_the_fails_allclose_legend(tmp_path):
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib (bench skips it without)")
    results = [_result([bench.Row("eager", ms=2.0, allclose=True), bench.Row("fusedconv", ms=1.0, allclose=True),
                        bench.Row("compile", ms=0.5, allclose=False)])]
    bench.chart(results, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    (ax,) = bench.draw_chart(results).axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[-1].startswith("fails allclose"), legend
    hatched = [p.get_hatch() for p in ax.patches if p.get_hatch()]
    assert hatched == ["///"]  # compile's bar only, not the legend's swatch (that is not in ax.patches)


def test_reference_resolution_order(tmp_path, monkeypatch):
    """--reference, then FUSEDCONV_REFERENCE, then ../shared/reference.py, then
    shared/reference.py, from the current directory."""
    work = tmp_path / "checkout"
    (work / "shared").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    inside, beside = work / "shared" / "reference.py", tmp_path / "shared" / "reference.py"
    explicit, from_env = tmp_path / "mine.py", tmp_path / "env.py"
    for f in (inside, beside, explicit, from_env):
        f.write_text(f"WHO = {f.name!r}\n")
    inside, beside, explicit, from_env = (f.resolve() for f in (inside, beside, explicit, from_env))
    monkeypatch.chdir(work)
    monkeypatch.delenv("FUSEDCONV_REFERENCE", raising=False)

    def found(path=None):
        where, why = bench.find_reference(path)
        return where.resolve(), why

    assert found() == (beside, "default")
    beside.unlink()
    assert found() == (inside, "default")
    monkeypatch.setenv("FUSEDCONV_REFERENCE", str(from_env))
    assert found() == (from_env, "FUSEDCONV_REFERENCE")
    assert found(str(explicit)) == (explicit, "--reference")
    assert bench.load_reference(str(explicit)).WHO == "mine.py"


def test_a_named_reference_that_is_missing_is_an_error(tmp_path, monkeypatch):
    """No falling back past a file the caller named: that would check against another model."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUSEDCONV_REFERENCE", str(REFERENCE_PATH))
    with pytest.raises(FileNotFoundError, match="--reference .*nope.py: no such file"):
        bench.find_reference(str(tmp_path / "nope.py"))
    monkeypatch.setenv("FUSEDCONV_REFERENCE", str(tmp_path / "gone.py"))
    with pytest.raises(FileNotFoundError, match="FUSEDCONV_REFERENCE .*gone.py: no such file"):
        bench.find_reference()


def test_bench_without_a_reference_lists_what_it_tried(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FUSEDCONV_REFERENCE"}
    work = (tmp_path / "a" / "b").resolve()
    work.mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "fusedconv", "bench"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    for tried in ("--reference (not given)", "FUSEDCONV_REFERENCE (not set)",
                  str(work.parent / "shared" / "reference.py"), str(work / "shared" / "reference.py")):
        assert tried in r.stderr, r.stderr
