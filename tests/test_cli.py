"""The command line: the README's main job on this machine, and the info report."""
import json
import subprocess
import sys

import torch

from helpers import REFERENCE_PATH


def test_bench_checks_the_reference_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "fusedconv", "bench", "--reference", str(REFERENCE_PATH),
                        "--batch", "2", "--size", "24", "--dtype", "fp32,bf16", "--json", str(out),
                        "--reps", "3"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    payload = json.loads(out.read_text())
    rows = {(res["dtype"], row["peer"]): row for res in payload["results"] for row in res["rows"]}
    assert rows[("fp32", "fusedconv")]["allclose"] and rows[("bf16", "fusedconv")]["allclose"]
    assert rows[("fp32", "fusedconv")]["max_abs_err"] < 1e-4
    if not torch.cuda.is_available():
        assert "no CUDA GPU here" in r.stdout and "Not measurable" in r.stdout


def test_bench_fails_on_a_wrong_peer_free_result(tmp_path):
    """The exit status reflects fusedconv's correctness: a reference whose model differs (scale
    doubled) must make the check fail."""
    wrong = tmp_path / "reference.py"
    wrong.write_text(REFERENCE_PATH.read_text().replace("x = x * self.scale", "x = x * self.scale * 2"))
    r = subprocess.run([sys.executable, "-m", "fusedconv", "bench", "--reference", str(wrong),
                        "--batch", "1", "--size", "16", "--reps", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NO" in r.stdout
