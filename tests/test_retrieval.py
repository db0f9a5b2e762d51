"""Chunked exact top-K equals the full similarity matrix; exclusion, ties and padding; the FAISS path."""
import pytest
import torch
import torch.nn.functional as Fn

from searle_lib.retrieval import build_faiss_index, faiss_topk, recall_vs_exact, topk_cosine


def _feats(n, d=32, seed=0):
    return Fn.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("chunk_size,query_chunk", [(31, 5), (64, 1000), (1000, 3), (4096, 4096)])
def test_chunked_equals_full_matrix(chunk_size, query_chunk):
    q, g = _feats(37, seed=1), _feats(1000, seed=2)
    full_s, full_i = (q @ g.T).topk(10, dim=1)
    s, i = topk_cosine(q, g, 10, chunk_size=chunk_size, query_chunk=query_chunk)
    assert torch.equal(i, full_i)
    assert torch.allclose(s, full_s, atol=1e-6)


def test_exclusion_one_and_several_per_query():
    q, g = _feats(20, seed=3), _feats(300, seed=4)
    sims = q @ g.T
    ref = sims.argmax(dim=1)  # exclude each query's best match, as CIRR removes the reference
    ref[3] = -1  # no exclusion for query 3
    masked = sims.clone()
    rows = torch.arange(20)[ref >= 0]
    masked[rows, ref[ref >= 0]] = float("-inf")
    s, i = topk_cosine(q, g, 15, chunk_size=41, exclude=ref)
    assert torch.equal(i, masked.topk(15, dim=1).indices)
    assert not (i == ref[:, None]).any(dim=1)[ref >= 0].any() and i[3, 0] == sims[3].argmax()
    two = torch.stack([ref.clamp(min=0), sims.argsort(dim=1, descending=True)[:, 1]], 1)
    _, i2 = topk_cosine(q, g, 15, chunk_size=50, exclude=two)
    assert not (i2[:, :, None] == two[:, None, :]).any()


def test_ties_are_broken_by_gallery_index_and_short_lists_are_padded():
    g = Fn.normalize(torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 0]]), dim=-1)  # rows 0, 2, 3 identical
    s, i = topk_cosine(torch.tensor([[1.0, 0]]), g, 4, chunk_size=1)
    assert i.tolist() == [[0, 2, 3, 1]]
    s, i = topk_cosine(torch.tensor([[1.0, 0]]), g[:2], 5, exclude=torch.tensor([0]))
    assert i.tolist() == [[1, -1]] and torch.isneginf(s[0, 1])  # k clipped to N = 2, one candidate left


def test_bad_shapes():
    with pytest.raises(ValueError, match="must be"):
        topk_cosine(torch.zeros(2, 3), torch.zeros(4, 5), 1)
    with pytest.raises(ValueError, match="exclude"):
        topk_cosine(_feats(2), _feats(5), 1, exclude=torch.tensor([0, 1, 2]))


def test_recall_vs_exact_by_hand():
    exact = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = torch.tensor([[4, 3, 9, 9], [5, 6, 7, 8]])
    assert recall_vs_exact(approx, exact) == pytest.approx(6 / 8)


def test_faiss_flat_is_exact_and_ivf_recall_is_measurable():
    pytest.importorskip("faiss")
    # clustered data (like image features), where IVF works as intended
    centers = _feats(20, seed=5)
    labels = torch.randint(0, 20, (4000,), generator=torch.Generator().manual_seed(6))
    g = Fn.normalize(centers[labels] + 0.3 * _feats(4000, seed=7), dim=-1)
    q = Fn.normalize(centers[labels[:50]] + 0.3 * _feats(50, seed=8), dim=-1)
    exact_s, exact_i = topk_cosine(q, g, 50)
    flat_s, flat_i = faiss_topk(q, build_faiss_index(g, kind="flat"), 50)
    assert recall_vs_exact(flat_i, exact_i) == 1.0 and torch.allclose(flat_s, exact_s, atol=1e-5)
    ivf = build_faiss_index(g, kind="ivf", nlist=16, nprobe=4)
    r = recall_vs_exact(faiss_topk(q, ivf, 50)[1], exact_i)
    assert 0.5 < r <= 1.0
    ex = exact_i[:, 0]
    _, i = faiss_topk(q, build_faiss_index(g, kind="hnsw"), 10, exclude=ex)
    assert not (i == ex[:, None]).any() and i.shape == (50, 10)
