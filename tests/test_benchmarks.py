"""The benchmark scripts run and write the JSON the performance chapter reads (no timings are checked here)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _run(script: str, out: Path, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args, "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def test_gpu_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)


@pytest.mark.slow  # five scripts in subprocesses, ~45 s on 2 busy cores
def test_scripts_write_json_named_by_device(tmp_path):
    from searle_lib.provenance import collect_benchmarks
    oti = _run("oti.py", tmp_path, "--model", "test-micro-vit", "--steps", "3", "--ref-images", "3",
               "--fast-images", "5", "--fast-batch", "4", "--concepts", "20", "--phrases", "8", "--ablation",
               "--noise-images", "2")
    assert oti["reference"]["images"] == 3 and oti["fast"]["batch"] == 4
    assert set(oti["speedup"]) == {"fast", "fast_without_prefix_split", "fast_without_packing"}
    assert oti["exactness"]["images_compared"] == 3 and oti["exactness"]["max_abs_token_diff"] < 1e-5
    assert oti["device"]["type"] == "cpu" and oti["device"]["name"]
    assert oti["fast"]["plain_encode"]["rows"] % 8 == 0 and "plain_encode" not in oti["reference"]  # whole lists
    assert oti["noise_floor"]["reference_vs_nudged_reference"]["images_compared"] == 2
    phi = _run("phi.py", tmp_path, "--model", "test-micro-vit", "--steps", "2", "--batch", "8",
               "--concepts", "20", "--phrases", "8")
    assert phi["with_gpt"]["steps"] == 2 and phi["without_gpt"]["lambda_gpt"] == 0
    enc = phi["with_gpt"]["plain_encode"]  # whole lists of 8 phrases, one per concept drawn
    assert enc["rows"] % 8 == 0 and 8 <= enc["rows"] <= 16 * 8 and "plain_encode" not in phi["with_gpt_reference"]
    feats = _run("features.py", tmp_path, "--model", "test-micro-vit", "--images", "6", "--batch", "4",
                 "--workers", "0", "1")
    assert feats["workers_1"]["same_features_as_first"]
    host = _run("oti_host.py", tmp_path, "--model", "test-micro-vit", "--images", "5", "--batch", "4", "--steps",
                "3", "--concepts", "20", "--phrases", "8", "--workers", "0")
    parts = host["parts_inclusive"]
    assert parts["per-batch set-up"]["calls"] == 2 and parts["plans"]["calls"] == 5  # 2 batches, 5 images
    assert 0 < host["host_seconds"] <= host["seconds"]
    if importlib.util.find_spec("faiss"):
        ret = _run("retrieval.py", tmp_path, "--sizes", "2000", "--queries", "40", "--dim", "32", "--data",
                   "clustered", "--clusters", "20", "--nprobe", "1", "4", "1000")
        sweep = ret["runs"][0]["faiss"]["sweep"]  # 44 cells: nprobe 1000 visits them all, an exhaustive search
        assert [s["nprobe"] for s in sweep] == [1, 4, 44] and sweep[-1]["recall_at_50_vs_exact"] == 1.0
        assert sweep[0]["recall_at_50_vs_exact"] < 1.0 and ret["data"] == "clustered"
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == ["features-test-micro-vit-cpu.json", "oti-host-test-micro-vit-cpu.json",
                     "oti-test-micro-vit-cpu.json", "phi-test-micro-vit-cpu.json"] + \
        (["retrieval-clustered-cpu.json"] if importlib.util.find_spec("faiss") else [])
    table = collect_benchmarks(tmp_path)
    assert set(table["file"]) == set(names) and (table["device"] != "").all()
    assert table["key"].str.endswith("per_s").sum() >= 8


@pytest.mark.slow  # two profiles in subprocesses, ~30 s
def test_step_profile_leaves_the_batch_set_up_out(tmp_path):
    """A batch's set-up grows with the steps it plans for; the operators charged to a profiled step must not."""
    def profile(plan_steps: int) -> dict:
        out = tmp_path / str(plan_steps)
        return _run("oti_profile.py", out, "--model", "test-micro-vit", "--batches", "4", "--steps", "2",
                    "--plan-steps", str(plan_steps), "--profile-steps", "2", "--concepts", "20")["profile"]
    short, long = profile(4), profile(60)
    assert long["setup_ops"] > 5 * short["setup_ops"] > 0
    assert abs(long["ops_per_step"] - short["ops_per_step"]) < 0.1 * short["ops_per_step"]
