"""Retrieval throughput: exact chunked top-K (``searle_lib.retrieval.topk_cosine``) at several gallery sizes, its
peak memory, and an approximate FAISS index's recall@K against the exact ranking (IVF: one index searched at
several ``nprobe``, a recall/speed curve), on random L2-normalised features.

Each gallery size runs in its own process so that its peak memory is its own. Features are random: ``uniform`` on
the sphere (the hardest case for an IVF index: no cluster structure) or ``clustered`` (a mixture of Gaussians around
``--clusters`` well-separated random centres: an easy case once each cluster holds more than ``--k`` images). Real
features lie between the two. Prints one JSON object.

    python benchmarks/retrieval.py                                    # 10k / 123k / 1M, d=512, top-50, CPU
    python benchmarks/retrieval.py --sizes 10000 --queries 200 --faiss none
    python benchmarks/retrieval.py --data clustered --nprobe 8 32
    python benchmarks/retrieval.py --device cuda
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as Fn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from searle_lib.provenance import cpu_name  # noqa: E402


def _rss_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so the next peak belongs to what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def make_features(n: int, dim: int, data: str, seed: int, device: str, centres: torch.Tensor | None = None,
                  block: int = 65536) -> torch.Tensor:
    """``n`` L2-normalised rows, generated block by block into one tensor (no 2x transient for 1M rows)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim)
    for i in range(0, n, block):
        x = torch.randn(min(block, n - i), dim, generator=g)
        if data == "clustered":
            labels = torch.randint(0, centres.shape[0], (x.shape[0],), generator=g)
            x = centres[labels] + 0.5 * x / math.sqrt(dim)  # noise norm ~0.5 around unit-norm centres
        out[i:i + x.shape[0]] = Fn.normalize(x, dim=-1)
    return out.to(device)


def run_one(args: argparse.Namespace, size: int, n_queries: int) -> dict:
    """One gallery size: exact top-K timing and peak memory, then FAISS build/search time and recall."""
    from searle_lib.retrieval import build_faiss_index, faiss_topk, recall_vs_exact, topk_cosine

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    centres = Fn.normalize(torch.randn(args.clusters, args.dim, generator=torch.Generator().manual_seed(99)), dim=-1)
    gallery = make_features(size, args.dim, args.data, 1, args.device, centres)
    queries = make_features(n_queries, args.dim, args.data, 2, args.device, centres)
    res: dict = {"gallery": size, "queries": n_queries, "dim": args.dim, "k": args.k,
                 "gallery_mb": round(gallery.numel() * 4 / 2**20, 1),
                 "block_scores_mb": round(min(args.query_chunk, n_queries) * min(args.chunk_size, size) * 4 / 2**20, 1)}

    def exact():
        out = topk_cosine(queries, gallery, args.k, chunk_size=args.chunk_size, query_chunk=args.query_chunk)
        if cuda:
            torch.cuda.synchronize()
        return out

    topk_cosine(queries[:8], gallery[:args.chunk_size], args.k)  # warm-up (BLAS threads, CUDA context)
    rss_before = _rss_mb("VmRSS")
    reset = _reset_peak()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    _, exact_i = exact()
    seconds = time.perf_counter() - t
    res.update(exact_seconds=round(seconds, 3), exact_queries_per_s=round(n_queries / seconds, 1))
    if cuda:
        res["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    res["rss_before_mb"] = round(rss_before, 1) if rss_before else None
    res["peak_rss_mb"] = round(_rss_mb("VmHWM"), 1) if _rss_mb("VmHWM") else None
    res["peak_rss_is_search_only"] = reset  # False: the peak also covers generating the features
    if res["rss_before_mb"] and res["peak_rss_mb"]:
        res["search_extra_peak_mb"] = round(res["peak_rss_mb"] - res["rss_before_mb"], 1)

    if args.faiss != "none" and importlib.util.find_spec("faiss") is None:
        res["faiss"] = "not installed (exact search only)"  # the exact figures still count; say why FAISS is absent
    elif args.faiss != "none":
        import faiss
        if args.threads:
            faiss.omp_set_num_threads(args.threads)  # the same threads as the exact search, for a fair comparison
        nlist = args.nlist or max(1, int(math.sqrt(size)))
        t = time.perf_counter()
        index = build_faiss_index(gallery.cpu(), kind=args.faiss, nlist=nlist, nprobe=args.nprobe[0],
                                  train_size=min(size, args.train_per_list * nlist))
        res["faiss"] = {"kind": args.faiss, "nlist": nlist if args.faiss == "ivf" else None,
                        "build_seconds": round(time.perf_counter() - t, 2), "sweep": []}
        faiss_topk(queries[:8].cpu(), index, args.k)  # warm-up (thread pool), not timed
        nprobes = sorted({min(p, nlist) for p in args.nprobe}) if args.faiss == "ivf" else [None]
        for nprobe in nprobes:  # one index, searched at each nprobe (values past nlist are the same search)
            if nprobe is not None:
                index.nprobe = nprobe
            t = time.perf_counter()
            _, approx_i = faiss_topk(queries.cpu(), index, args.k)
            search = time.perf_counter() - t
            res["faiss"]["sweep"].append({
                "nprobe": nprobe, "queries_per_s": round(n_queries / search, 1),
                f"recall_at_{args.k}_vs_exact": round(recall_vs_exact(approx_i, exact_i.cpu()), 4)})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 123_403, 1_000_000],
                    help="gallery sizes (123,403 is the CIRCO/COCO-unlabeled gallery)")
    ap.add_argument("--queries", type=int, nargs="+", default=[1000, 1000, 100],
                    help="queries per size (one value for all, or one per size)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--chunk-size", type=int, default=16384)
    ap.add_argument("--query-chunk", type=int, default=1024)
    ap.add_argument("--data", choices=["uniform", "clustered"], default="uniform")
    ap.add_argument("--clusters", type=int, default=1000, help="centres of the clustered data")
    ap.add_argument("--faiss", choices=["ivf", "hnsw", "flat", "none"], default="ivf")
    ap.add_argument("--nlist", type=int, default=0, help="IVF cells (0: sqrt(N))")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64, 256],
                    help="IVF cells visited per query: one index, searched once per value (recall/speed curve)")
    ap.add_argument("--train-per-list", type=int, default=64, help="k-means training points per IVF cell")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "benchmarks"),
                    help="folder for retrieval-<data>-<device>.json")
    ap.add_argument("--no-save", action="store_true", help="only print the JSON")
    ap.add_argument("--one", nargs=2, type=int, metavar=("SIZE", "QUERIES"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:  # child process: one size, one JSON line
        print(json.dumps(run_one(args, *args.one)))
        return
    queries = args.queries if len(args.queries) == len(args.sizes) else [args.queries[0]] * len(args.sizes)
    passthrough = list(sys.argv[1:])
    runs = []
    for size, nq in zip(args.sizes, queries):
        out = subprocess.run([sys.executable, __file__, *passthrough, "--one", str(size), str(nq)],
                             capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if out.returncode:
            sys.exit(f"gallery size {size} failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"size {size}: {runs[-1]['exact_queries_per_s']} queries/s", file=sys.stderr)
    try:
        import faiss
        faiss_version, faiss_threads = faiss.__version__, args.threads or faiss.omp_get_max_threads()
    except ImportError:
        faiss_version = faiss_threads = None
    cuda = args.device.startswith("cuda")
    text = json.dumps({
        "benchmark": "retrieval", "device": torch.cuda.get_device_name(args.device) if cuda else cpu_name(),
        "device_type": "cuda" if cuda else "cpu",
        "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
        "faiss_threads": faiss_threads,
        "torch": torch.__version__, "faiss": faiss_version, "data": args.data,
        "chunk_size": args.chunk_size, "query_chunk": args.query_chunk, "runs": runs}, indent=1)
    print(text)
    if not args.no_save:
        slug = "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(args.device).lower()).strip("-") \
            if cuda else "cpu"
        path = Path(args.out) / f"retrieval-{args.data}-{slug}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
