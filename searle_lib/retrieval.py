"""Top-K cosine retrieval over a gallery (reference section 7: queries and gallery are L2-normalised and ranked by
their dot product; CIRR removes the reference image from each ranking).

``topk_cosine`` is exact and chunked: it walks the gallery in blocks and keeps a running top-K per query, so at most
``query_chunk x chunk_size`` similarities exist at once, never a full Q x N matrix; a 1M-image gallery ranks in
bounded memory. ``faiss_topk`` is an optional approximate path (FAISS IVF or HNSW) for galleries beyond that, whose
recall against the exact ranking is measured with ``recall_vs_exact`` (see ``benchmarks/retrieval.py``).

Both expect **L2-normalised** features (the caller normalises, as the official code does): on unnormalised input
they rank by dot product, not cosine.
"""
from __future__ import annotations

import math

import torch


def _exclusion(exclude: torch.Tensor | None, n_queries: int) -> torch.Tensor | None:
    if exclude is None:
        return None
    exclude = torch.as_tensor(exclude, dtype=torch.long)
    if exclude.ndim == 1:
        exclude = exclude[:, None]
    if exclude.ndim != 2 or exclude.shape[0] != n_queries:
        raise ValueError(f"exclude has shape {tuple(exclude.shape)}; expected [{n_queries}] or [{n_queries}, m] "
                         "gallery indices (-1 for none)")
    return exclude


def sort_by_score(scores: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row by score (descending), equal scores by gallery index; pad positions get index -1."""
    indices = indices.masked_fill(torch.isneginf(scores), -1)
    by_index = indices.masked_fill(indices < 0, torch.iinfo(torch.long).max).argsort(dim=1, stable=True)
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    return scores.gather(1, by_score), indices.gather(1, by_score)


def topk_cosine(queries: torch.Tensor, gallery: torch.Tensor, k: int, *, chunk_size: int = 16384,
                query_chunk: int = 1024, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` gallery rows by dot product for each query, computed block by block.

    Args:
        queries: ``[Q, d]`` L2-normalised query features.
        gallery: ``[N, d]`` L2-normalised gallery features (the device and dtype used for the products).
        k: ranked list length; clipped to N.
        chunk_size: gallery rows per block.
        query_chunk: queries per block; the largest temporary is ``query_chunk x chunk_size`` scores.
        exclude: ``[Q]`` or ``[Q, m]`` gallery indices removed from each query's ranking (-1 = none), e.g.
            the CIRR reference image.

    Returns:
        ``(scores [Q, k], indices [Q, k])`` sorted by descending score, ties by ascending gallery index; when a
        query has fewer than ``k`` candidates left the tail is padded with score ``-inf`` and index ``-1``.
    """
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and gallery {tuple(gallery.shape)} must be [Q, d] and [N, d]")
    n_q, n_g = queries.shape[0], gallery.shape[0]
    if n_g == 0:
        raise ValueError("the gallery is empty")
    k = min(int(k), n_g)
    if k < 1:
        raise ValueError(f"k={k}: expected at least 1")
    exclude = _exclusion(exclude, n_q)
    queries = queries.to(device=gallery.device, dtype=gallery.dtype)
    out_s = torch.empty(n_q, k, dtype=gallery.dtype)
    out_i = torch.empty(n_q, k, dtype=torch.long)
    for q0 in range(0, n_q, query_chunk):
        q = queries[q0:q0 + query_chunk]
        ex = exclude[q0:q0 + query_chunk].to(gallery.device) if exclude is not None else None
        best_s = torch.empty(q.shape[0], 0, dtype=gallery.dtype, device=gallery.device)
        best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=gallery.device)
        for g0 in range(0, n_g, chunk_size):
            sims = q @ gallery[g0:g0 + chunk_size].T  # [q, c]: the only large temporary
            if ex is not None:
                local = ex - g0
                hit = (ex >= 0) & (local >= 0) & (local < sims.shape[1])
                rows = torch.arange(q.shape[0], device=sims.device)[:, None].expand_as(local)
                sims[rows[hit], local[hit]] = float("-inf")
            s, i = sims.topk(min(k, sims.shape[1]), dim=1)
            cand_s, cand_i = torch.cat([best_s, s], 1), torch.cat([best_i, i + g0], 1)
            keep = cand_s.topk(min(k, cand_s.shape[1]), dim=1).indices
            best_s, best_i = cand_s.gather(1, keep), cand_i.gather(1, keep)
        s, i = sort_by_score(best_s.cpu(), best_i.cpu())
        out_s[q0:q0 + q.shape[0]], out_i[q0:q0 + q.shape[0]] = s, i
    return out_s, out_i


def build_faiss_index(gallery: torch.Tensor, *, kind: str = "ivf", nlist: int | None = None, nprobe: int = 32,
                      hnsw_m: int = 32, ef_search: int = 128, train_size: int = 100_000, seed: int = 0):
    """A FAISS inner-product index over ``gallery`` (L2-normalised, float32 on the CPU).

    Args:
        kind: ``flat`` (exact, BLAS), ``ivf`` (IVF-Flat: k-means cells, ``nprobe`` visited) or ``hnsw`` (graph).
        nlist: IVF cells; default ``4 * sqrt(N)``, capped so each cell has >= 39 training points.
        nprobe: IVF cells visited per query (recall/speed trade-off).
        hnsw_m, ef_search: HNSW graph degree and search breadth.
        train_size: gallery rows sampled (with ``seed``) to train IVF's k-means.
    """
    try:
        import faiss
    except ImportError as e:
        raise ImportError("faiss is not installed; `pip install faiss-cpu` (pinned in requirements.txt) "
                          "or use topk_cosine, which is exact") from e
    x = gallery.detach().float().cpu().contiguous().numpy()
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:train_size].numpy()
        index.train(x[rows])
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"faiss index kind {kind!r}: expected 'flat', 'ivf' or 'hnsw'")
    index.add(x)
    return index


def faiss_topk(queries: torch.Tensor, index, k: int, *,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` from a ``build_faiss_index`` index, with the same output conventions as ``topk_cosine``."""
    exclude = _exclusion(exclude, queries.shape[0])
    extra = exclude.shape[1] if exclude is not None else 0
    kk = min(k + extra, index.ntotal)
    scores, indices = index.search(queries.detach().float().cpu().contiguous().numpy(), kk)
    scores, indices = torch.from_numpy(scores), torch.from_numpy(indices).long()
    scores = scores.masked_fill(indices < 0, float("-inf"))
    if exclude is not None:
        drop = (indices[:, :, None] == exclude[:, None, :]).any(-1) & (indices >= 0)
        scores = scores.masked_fill(drop, float("-inf"))
    scores, indices = sort_by_score(scores, indices)
    k = min(k, index.ntotal)
    return scores[:, :k], indices[:, :k]


def recall_vs_exact(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean fraction of each exact top-k list found in the approximate one (``[Q, k]`` index tensors, -1 = pad)."""
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(f"{approx.shape[0]} approximate vs {exact.shape[0]} exact rankings")
    found = (exact[:, :, None] == approx[:, None, :]).any(-1) & (exact >= 0)
    return float(found.sum() / (exact >= 0).sum().clamp(min=1))
