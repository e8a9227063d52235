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
