"""Performance-chapter tables from benchmark JSON: one row per run, ratios never mixed across devices."""
import json

from searle_lib import performance
from searle_lib.provenance import collect_benchmarks


def _oti(model, kind, name, fast_rate, speedup):
    return {"benchmark": "oti", "device": {"type": kind, "name": name}, "model": model, "steps": 350,
            "reference": {"batch": 32, "images_per_s_at_350": fast_rate / speedup},
            "fast": {"batch": 1024, "images_per_s_at_350": fast_rate}, "speedup": {"fast": speedup},
            "exactness": {"max_abs_token_diff": 1e-8}}


def _write(folder, name, data):
    (folder / name).write_text(json.dumps(data))


def test_tables_and_gpu_goal(tmp_path):
    _write(tmp_path, "oti-ViT-B-32-cpu.json", _oti("ViT-B-32", "cpu", "AMD EPYC", 0.05, 12.0))
    _write(tmp_path, "oti-ViT-B-32-cuda-h100.json", _oti("ViT-B-32", "cuda", "NVIDIA H100", 50.0, 110.0))
    _write(tmp_path, "oti-ViT-L-14-cuda-h100.json", _oti("ViT-L-14", "cuda", "NVIDIA H100", 20.0, 45.0))
    _write(tmp_path, "phi-ViT-B-32-cpu.json", {"benchmark": "phi", "device": {"name": "AMD EPYC"}, "model": "ViT-B-32",
                                               "without_gpt": {"steps_per_s": 9.0}, "with_gpt": {
                                                   "steps_per_s": 0.5, "steps_per_s_without_plain_encode": 1.0,
                                                   "plain_encode": {"rows_per_s": 100.0}}})
    _write(tmp_path, "features-ViT-B-32-cpu.json", {"benchmark": "features", "device": {"name": "AMD EPYC"},
                                                    "model": "ViT-B-32", "workers_0": {"images_per_s": 10.0},
                                                    "workers_2": {"images_per_s": 15.0}})
    _write(tmp_path, "retrieval-clustered-cpu.json", {
        "benchmark": "retrieval", "device": "AMD EPYC", "device_type": "cpu", "data": "clustered", "runs": [
            {"gallery": 10000, "k": 50, "exact_queries_per_s": 800.0, "faiss": {"kind": "ivf", "nlist": 100, "sweep": [
                {"nprobe": 1, "queries_per_s": 9000.0, "recall_at_50_vs_exact": 0.4},
                {"nprobe": 100, "queries_per_s": 700.0, "recall_at_50_vs_exact": 1.0}]}},
            {"gallery": 123403, "k": 50, "exact_queries_per_s": 80.0, "faiss": "not installed (exact search only)"}]})
    _write(tmp_path, "oti-profile-ViT-B-32-cpu.json", {
        "benchmark": "oti_profile", "device": {"name": "AMD EPYC"}, "model": "ViT-B-32",
        "eager": {"128": {"batch": 128, "packed": True, "ms_per_step": 50.0},
                  "128_unpacked": {"batch": 128, "packed": False, "ms_per_step": 60.0},
                  "256": {"batch": 256, "packed": True, "ms_per_step": 90.0}},
        "profile": {"batch": 128, "ops_per_step": 900, "setup_ops": 3000},
        "profile_unpacked": {"batch": 128, "ops_per_step": 800, "setup_ops": 2000}})
    _write(tmp_path, "oti-profile-ViT-L-14-cpu.json", {  # an older profile: set-up charged to the steps
        "benchmark": "oti_profile", "device": {"name": "AMD EPYC"}, "model": "ViT-L-14",
        "eager": {"64": {"batch": 64, "packed": True, "ms_per_step": 70.0}},
        "profile": {"batch": 64, "ops_per_step": 5000}})
    _write(tmp_path, "oti-host-ViT-B-32-cpu.json", {
        "benchmark": "oti-host", "device": {"name": "AMD EPYC"}, "model": "ViT-B-32", "images": 2048,
        "seconds": 30.0, "stand_in_steps_seconds": 5.0, "host_seconds": 25.0, "host_bound_images_per_s": 81.9,
        "parts_inclusive": {"per-batch set-up": {"seconds": 12.0, "calls": 2}}})
    t = performance.tables(collect_benchmarks(tmp_path))
    host = t["oti_host"]
    assert len(host) == 1 and host.iloc[0]["host s"] == 25.0 and host.iloc[0]["per-batch set-up s"] == 12.0
    assert "waiting for the workers to start s" not in host  # a part the file lacks is left out, not invented
    steps = t["oti_steps"]
    assert list(steps["packed rows"]) == [True, False, True, True] and list(steps["batch"]) == [128, 128, 256, 64]
    assert steps["speed-up of packing"].iloc[0] == 1.2 and steps["speed-up of packing"].iloc[1:].isna().all()
    assert steps["operators per step"].iloc[:2].tolist() == [900, 800]
    assert steps["operators per step"].iloc[2:].isna().all()  # not the profiled batch; set-up not left out
    oti = t["oti"].set_index("device")
    assert oti.loc["AMD EPYC", "speed-up"] == 12.0 and oti["goal images/s (H100)"].isna().sum() == 1
    gpu = t["oti"][t["oti"]["device"] == "NVIDIA H100"].set_index("model")
    assert gpu.loc["ViT-B-32", "goal images/s (H100)"] == 46.0 and bool(gpu.loc["ViT-B-32", "goal met"])
    assert gpu.loc["ViT-L-14", "goal images/s (H100)"] == 22.0 and not bool(gpu.loc["ViT-L-14", "goal met"])
    assert "not met" in performance.gpu_status(t["oti"]) and "50.0 images/s" in performance.gpu_status(t["oti"])
    phi = t["phi"].iloc[0]  # the steps' own rate, the one-off encoding apart
    assert phi["steps/s with GPT loss"] == 1.0 and phi["plain phrases encoded/s (once per run)"] == 100.0
    assert list(t["features"].columns[-2:]) == ["images/s, 0 workers", "images/s, 2 workers"]
    r = t["retrieval"]
    assert list(r["gallery"]) == [10000, 123403] and set(r["features"]) == {"clustered"}
    f = t["faiss"]  # one row per nprobe of the size that has an index; none for the size without
    assert list(f["nprobe"]) == [1, 100] and list(f["recall vs exact"]) == [0.4, 1.0] and set(f["k"]) == {50}
    assert set(f["gallery"]) == {10000} and set(f["exact queries/s"]) == {800.0}
    coverage = performance.gpu_coverage(collect_benchmarks(tmp_path))
    assert coverage.startswith("GPU figures exist for oti;")  # the other kinds ran on the CPU only
    assert 'ONLY="features phi retrieval"' in coverage and "oti-host" in coverage


def test_no_files_means_no_gpu_figures(tmp_path):
    t = performance.tables(collect_benchmarks(tmp_path))
    assert all(df.empty for df in t.values())
    assert performance.gpu_status(t["oti"]).startswith("No GPU figures")
    assert performance.gpu_coverage(collect_benchmarks(tmp_path)) == "No benchmark files."
    _write(tmp_path, "oti-test-cpu.json", _oti("test-tiny-vit", "cpu", "AMD EPYC", 1.0, 5.0))
    t = performance.tables(collect_benchmarks(tmp_path))
    assert performance.gpu_status(t["oti"]).startswith("No GPU figures") and len(performance.speedup_bars(t["oti"]))
