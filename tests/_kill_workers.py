"""Subprocess side of ``tests/test_kill_resume.py``: a "zygote" that imports the library once, then forks one
process per attempt of a small SEARLE pipeline run (phrases -> features -> concepts -> OTI -> phi, the real
``searle_lib.pipeline`` stages with their real caches), so the test can SIGKILL attempts without paying Python's
start-up each time.

Protocol on stdin/stdout (one line each)::

    run <cache_dir> <attempt>   ->  pid <pid>          fork an attempt (its output goes to <cache_dir>.out)
    wait <pid>                  ->  exit <pid> <code>  reap it (-9: killed by SIGKILL)
    quit

Every attempt appends ``<attempt> <stage> <unit> <time>`` to the spec's log when it *begins* a unit of work: a phrase
batch, an image of a feature chunk, an image of an OTI chunk, a phi epoch. The test counts units begun in a killed
attempt that a later attempt began again: the work each kill cost.

Three hooks add a delay: one per phrase batch (standing in for the language model), one per image read (standing
in for a slow disk) and one per phi epoch (standing in for 100k images; since the plain-phrase features are kept
for the whole run, a tiny run's later epochs take milliseconds and could all end between the kill point and the
kill), so that kills can land inside those stages too; they change no result.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback


def _log(path: str, attempt: str, stage: str, unit: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{attempt} {stage} {unit} {time.monotonic():.3f}\n".encode())  # one write on O_APPEND: lines never interleave
    finally:
        os.close(fd)


def _install_hooks(spec: dict, attempt: str, index: dict[str, int]) -> None:
    from searle_lib import features, images, oti, phi, phrases, pipeline
    log = spec["log"]

    gen_cls = phrases.PHRASE_GENERATORS["offline"]
    generate = gen_cls.generate

    def slow_generate(self, concepts, seed):
        _log(log, attempt, "phrases", concepts[0].replace(" ", "_"))
        time.sleep(spec["phrase_delay"])
        return generate(self, concepts, seed)
    gen_cls.generate = slow_generate

    getitem = images.ImageDataset.__getitem__

    def slow_getitem(self, i):
        _log(log, attempt, "features", i // spec["feature_chunk"])
        time.sleep(spec["image_delay"])
        return getitem(self, i)
    images.ImageDataset.__getitem__ = slow_getitem
    pipeline.extract_features = functools.partial(features.extract_features, chunk_images=spec["feature_chunk"])

    plan_image = oti.plan_image

    def logged_plan(image_id, *a, **k):
        _log(log, attempt, "oti", index[image_id] // spec["oti_chunk"])
        return plan_image(image_id, *a, **k)
    oti.plan_image = logged_plan

    tqdm = phi.tqdm

    def logged_tqdm(*a, **k):
        desc = k.get("desc") or ""
        if desc.startswith("phi epoch"):
            _log(log, attempt, "phi", desc.split()[-1])
            time.sleep(spec["phi_delay"])
        return tqdm(*a, **k)
    phi.tqdm = logged_tqdm


def run_attempt(spec: dict, cache_dir: str, attempt: str) -> None:
    """One attempt: the phi stage of the pipeline (which runs every stage before it), resuming what is on disk."""
    import torch
    torch.set_num_threads(1)  # the reference runs beside the attempts; one thread each, same arithmetic
    from searle_lib import pipeline
    from searle_lib.config import load_config
    cfg = load_config("tiny", {**spec["overrides"], "run.cache_dir": cache_dir})
    bb = pipeline.backbone(cfg)
    images = pipeline.unlabeled_images(cfg)
    _install_hooks(spec, attempt, {i: n for n, i in enumerate(images.ids)})
    run = pipeline.phi(cfg, bb, images, validate_split=None, progress=False)  # no benchmark here
    _log(spec["log"], attempt, "done", len(run.history.epochs))


def zygote(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    import torch  # noqa: F401  imported, never used here: no thread pool exists before the forks
    import searle_lib.pipeline  # noqa: F401
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "run":
            cache_dir, attempt = args
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    out = os.open(cache_dir + ".out", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    os.dup2(out, 1)
                    os.dup2(out, 2)
                    run_attempt(spec, cache_dir, attempt)
                except BaseException:
                    traceback.print_exc()
                    code = 1
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            print(f"pid {pid}", flush=True)
        elif cmd == "wait":
            pid = int(args[0])
            _, status = os.waitpid(pid, 0)
            print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
        elif cmd == "quit":
            return


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    zygote(sys.argv[1])
