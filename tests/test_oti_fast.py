"""The fast OTI machinery (issue 6) computes what ``text_encoding`` computes: same features, same gradients."""
import pytest
import torch

from searle_lib._oti_fast import (FastTextTower, FeatureCache, Packing, PhrasePool, StepRows, TokenCache,
                                  TokenTable, WordMemoTokenizer, unique_rows)
from searle_lib.text_encoding import encode_texts, encode_tokens

PROMPTS = ["a photo of a  $ ", " $ ", "We see a  $  in this image", "a photo of  $  that is detailed and shows it up"]
PLAIN = ["a photo of a red circle", "circle", "We see a blue square in this image today", "x"]


@pytest.fixture(scope="module")
def tower(micro_backbone):
    return FastTextTower(micro_backbone)


def test_tower_is_functional_for_open_clip_blocks(tower):
    assert tower.functional


@pytest.mark.parametrize("functional", [True, False])
def test_features_and_gradients_equal_the_module_path(micro_backbone, tower, functional):
    b = micro_backbone
    tower.functional = functional
    try:
        table = TokenTable(b, b.tokenize(PROMPTS))
        rows = torch.tensor([2, 0, 3, 0, 1])
        length = int(table.host_lengths[rows].max())
        v1 = torch.randn(len(rows), b.token_dim, generator=torch.Generator().manual_seed(0)).requires_grad_()
        v2 = v1.detach().clone().requires_grad_()
        fast = tower(table, rows, length, v1)
        ref = encode_tokens(b, b.tokenize([PROMPTS[i] for i in rows]), v2, truncate_batch=False)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
        target = torch.randn_like(ref)
        (fast * target).sum().backward()
        (ref * target).sum().backward()
        torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-4, atol=1e-6)
    finally:
        tower.functional = True


@pytest.mark.parametrize("split", [False, True])
def test_packed_rows_compute_each_row_to_its_end_with_the_same_features(micro_backbone, tower, split):
    b = micro_backbone
    table = TokenTable(b, b.tokenize(PROMPTS), split_prefix=split)
    idx = torch.randint(len(PROMPTS), (9, 5), generator=torch.Generator().manual_seed(1))  # [images, steps]
    packed, padded = StepRows(table, idx), StepRows(table, idx, pack=False)
    lengths = table.host_lengths[idx]
    for step in range(idx.shape[1]):
        pack = packed.packs[step]
        assert pack.S == padded.packs[step].S == int(lengths[:, step].max())
        assert pack.pos is not None and len(pack.pos) == int(lengths[:, step].sum())  # no padded position
        assert padded.packs[step].pos is None
        v1 = torch.randn(9, b.token_dim, generator=torch.Generator().manual_seed(step)).requires_grad_()
        v2 = v1.detach().clone().requires_grad_()
        f1, f2 = packed.features(tower, step, v1), padded.features(tower, step, v2)
        torch.testing.assert_close(f1, f2, rtol=1e-5, atol=1e-6)
        target = torch.randn_like(f1)
        (f1 * target).sum().backward()
        (f2 * target).sum().backward()
        torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-4, atol=1e-6)


def test_packing_pads_and_unpads_each_rows_own_positions():
    lengths, eot = torch.tensor([3, 1, 2]), torch.tensor([2, 0, 1])
    pack = Packing.of_lengths(lengths, eot, torch.device("cpu"))
    assert pack.pos.tolist() == [0, 1, 2, 3, 6, 7] and pack.pooled.tolist() == [2, 3, 5]
    x = torch.arange(6.0).view(6, 1)
    assert pack.pad(x).squeeze(-1).tolist() == [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    assert torch.equal(pack.unpad(pack.pad(x)), x)
    same = Packing.of_lengths(torch.tensor([2, 2]), torch.tensor([1, 1]), torch.device("cpu"))
    assert same.pos is None and same.pooled.tolist() == [1, 3]  # equal lengths: nothing to pack


def test_unique_rows_equals_torch_unique():
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 3, (500, 4), generator=g) * (torch.rand(500, 4, generator=g) < 0.8)
    for a in (rows, rows[:1], rows[:0]):
        want = torch.unique(a, dim=0, return_inverse=True)
        got = unique_rows(a)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_prompt_without_placeholder_is_refused(micro_backbone):
    with pytest.raises(ValueError, match="no placeholder"):
        TokenTable(micro_backbone, micro_backbone.tokenize(["a photo of a cat"]))


LISTS = {"red circle": PLAIN[:2], "blue square": PLAIN[2:], "cross": [PLAIN[3], "a small cross", PLAIN[1]]}


def test_plain_features_equal_encode_texts(micro_backbone, tower):
    cache = FeatureCache(tower, TokenCache(micro_backbone.tokenizer))
    keys = [(PLAIN[0], "red circle"), (PLAIN[3], "blue square"), (PLAIN[1], "red circle"), (PLAIN[0], "red circle")]
    got = cache.get(keys, LISTS)
    torch.testing.assert_close(got, encode_texts(micro_backbone, [p for p, _ in keys]), rtol=1e-5, atol=1e-6)
    assert torch.equal(got[3], got[0])
    assert list(cache.groups) == ["red circle", "blue square"] and cache.rows == 4  # both whole lists
    assert cache.unencoded(LISTS) == LISTS["cross"]  # what a prefetch for these lists still tokenizes


def test_plain_features_do_not_depend_on_what_was_encoded_before(micro_backbone, tower):
    """Each phrase is encoded with its concept's list alone, so a resumed or sharded run gets the same bits."""
    keys = [(PLAIN[1], "cross"), (PLAIN[1], "red circle"), (PLAIN[2], "blue square")]
    fresh = FeatureCache(tower, TokenCache(micro_backbone.tokenizer)).get(keys, LISTS)
    warm = FeatureCache(tower, TokenCache(micro_backbone.tokenizer))
    warm.get([(PLAIN[2], "blue square")], LISTS)  # alone it gets other bits than beside PLAIN[1] on this model
    warm.get([(PLAIN[0], "red circle"), ("a small cross", "cross")], LISTS)
    assert torch.equal(warm.get(keys, LISTS), fresh)
    assert warm.rows == 7  # the same text under two concepts is kept under each


def test_feature_cache_drops_the_least_recently_used_groups_when_full(micro_backbone, tower):
    cache = FeatureCache(tower, TokenCache(micro_backbone.tokenizer), max_rows=5)
    first = cache.get([(PLAIN[0], "red circle")], LISTS)
    cache.get([(PLAIN[2], "blue square")], LISTS)
    cache.get([(PLAIN[1], "red circle")], LISTS)  # used again: blue square is now the older one
    got = cache.get([("a small cross", "cross"), (PLAIN[0], "red circle")], LISTS)
    assert list(cache.groups) == ["red circle", "cross"] and cache.rows == 5
    torch.testing.assert_close(got, encode_texts(micro_backbone, ["a small cross", PLAIN[0]]), rtol=1e-5, atol=1e-6)
    again = cache.get([(PLAIN[2], "blue square"), (PLAIN[0], "red circle")], LISTS)  # this call's groups stay
    assert list(cache.groups) == ["red circle", "blue square"] and torch.equal(again[1], first[0])


@pytest.mark.slow  # two worker processes import torch and open_clip (forkserver)
def test_token_cache_matches_the_tokenizer_serial_and_in_processes(micro_backbone):
    texts = [f"a photo of thing number {i} $ here" for i in range(50)] + PLAIN
    full = micro_backbone.tokenize(texts)
    for workers in (0, 2):
        cache = TokenCache(micro_backbone.tokenizer, workers=workers, parallel_from=1)
        try:
            got = cache.stack(texts)
        finally:
            cache.close()
        assert torch.equal(got, full[:, :got.shape[1]]) and not full[:, got.shape[1]:].any()


def test_word_memo_tokenizer_equals_open_clip_on_random_and_real_text(micro_backbone):
    import random

    from searle_lib.phrases import offline_phrases
    tok = micro_backbone.tokenizer
    fast = WordMemoTokenizer.wrap(tok)
    assert isinstance(fast, WordMemoTokenizer)
    rng = random.Random(0)  # printable ASCII (the shortcut) mixed with what needs ftfy / html: &, non-ASCII, controls
    alphabet = [chr(i) for i in range(0x20, 0x7f)] + list("\t\n\r\x1b&\u00e9\u2019\u201c\ufb01\uff21\u2028\u00a0")
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(1500)]
    texts += ["a photo of  $  that is &amp; red", "  Hello   WORLD  ", "word " * 100, "<start_of_text> hi", "It's"]
    texts += offline_phrases("red circle", 64, seed=0) + [PROMPTS[0], PLAIN[0]]
    assert torch.equal(fast(texts), tok(texts))
    width = tok(texts).shape[1]  # rows are the padded tensor's rows up to end-of-text (token 0 is '!', not padding)
    assert all(r.tolist() + [0] * (width - len(r)) == row.tolist() for r, row in zip(fast.rows(texts), tok(texts)))


def test_phrase_pool_pairs_equal_indexing():
    phrases = {"a": ["a1", "a2"], "c": ["c1", "c2", "c3"]}
    pool = PhrasePool(["c", "a"], phrases)
    idx = torch.tensor([4, 0, 2, 3, 3]).numpy()
    assert pool.pairs(idx) == [pool[j] for j in idx]


def test_phrase_pool_indexes_like_the_list():
    phrases = {"a": ["a1", "a2"], "b": [], "c": ["c1", "c2", "c3"]}
    pool = PhrasePool(["c", "x", "a", "b"], phrases)
    listed = [(p, c) for c in ["c", "x", "a", "b"] if c in phrases for p in phrases[c]]
    assert len(pool) == len(listed) and [pool[j] for j in range(len(pool))] == listed == list(pool)
    assert pool[-1] == listed[-1] and not PhrasePool(["x"], phrases) and not PhrasePool(["a"], None)
    with pytest.raises(IndexError):
        pool[len(pool)]


@pytest.mark.parametrize("with_grad", [True, False])
def test_prefix_split_equals_the_module_path(micro_backbone, tower, with_grad):
    b = micro_backbone
    prompts = PROMPTS + ["a photo of a  $  again", "a photo of  $  that sits"]  # shared and distinct prefixes
    table = TokenTable(b, b.tokenize(prompts), split_prefix=True)
    assert table.split and table.prefixes.shape[0] == 4  # "a photo of a", "", "We see a", "a photo of"
    rows = torch.tensor([2, 0, 3, 0, 1, 4, 5])
    length = int(table.host_lengths[rows].max())
    v1 = torch.randn(len(rows), b.token_dim, generator=torch.Generator().manual_seed(0)).requires_grad_(with_grad)
    v2 = v1.detach().clone().requires_grad_(with_grad)
    fast = tower(table, rows, length, v1)
    ref = encode_tokens(b, b.tokenize([prompts[i] for i in rows]), v2, truncate_batch=False)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    if with_grad:
        target = torch.randn_like(ref)
        (fast * target).sum().backward()
        (ref * target).sum().backward()
        torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # two tokenizer processes (forkserver) start
def test_run_with_tokenizer_processes_and_prefetch_equals_serial(micro_backbone, monkeypatch):
    import searle_lib.oti as oti
    from searle_lib.config import OTIConfig
    phrases = {"red circle": [f"a photo of red circle that is number {i}" for i in range(40)],
               "blue square": [f"a photo of blue square that sits on {i}" for i in range(40)]}
    ids = [f"img{i}" for i in range(6)]
    ranked = {i: ["red circle", "blue square"] for i in ids}
    feats = torch.randn(len(ids), micro_backbone.feature_dim, generator=torch.Generator().manual_seed(2))
    cfg = OTIConfig(steps=6, batch_size=2, chunk_images=2)
    templates = ["a photo of a {}", "{} photo"]
    serial = oti.run_oti(micro_backbone, ids, feats, ranked, phrases, templates, cfg, progress=False)
    prefetched = []
    real_prefetch = TokenCache.prefetch

    def spy(self, texts):  # records the calls that started work in the processes
        before = len(self._pending)
        real_prefetch(self, texts)
        if len(self._pending) > before:
            prefetched.append(len(texts))
    class Started(TokenCache):  # the workers up before the run, as they are after a run's first seconds
        def __init__(self, *a, **kw):
            super().__init__(*a, parallel_from=1, **kw)
            self._ready_pool()
    monkeypatch.setattr(TokenCache, "prefetch", spy)
    monkeypatch.setattr(oti, "TokenCache", Started)
    workers = oti.run_oti(micro_backbone, ids, feats, ranked, phrases, templates, cfg, progress=False,
                          tokenizer_workers=2)
    assert len(prefetched) == 3  # batch 1 before it ran, batches 2 and 3 while the one before ran; no repeats
    assert torch.equal(workers.ema_tokens, serial.ema_tokens)


def test_token_cache_closed_while_its_processes_start_waits_for_nothing(micro_backbone, monkeypatch):
    import threading
    import types

    import searle_lib._oti_fast as fast
    gate, ended = threading.Event(), []

    def pool(*a, **kw):  # a pool that takes until the gate opens to start
        gate.wait(60)
        return types.SimpleNamespace(terminate=lambda: ended.append(True))
    ctx = types.SimpleNamespace(set_forkserver_preload=lambda modules: None, Pool=pool)
    monkeypatch.setattr(fast, "mp", types.SimpleNamespace(get_context=lambda kind: ctx))
    cache = TokenCache(micro_backbone.tokenizer, workers=2, parallel_from=1)
    starter = cache._starter
    cache.close()  # returns at once: the pool is still starting
    assert starter.is_alive() and cache.workers == 0
    got = cache.stack(PLAIN)  # after close: tokenized in this process
    assert torch.equal(got, micro_backbone.tokenize(PLAIN)[:, :got.shape[1]])
    gate.set()
    starter.join(10)
    assert ended == [True] and cache._pool is None  # the starting thread ended the pool it made


@pytest.mark.slow  # two tokenizer processes (forkserver) start
def test_token_cache_works_while_its_processes_start(micro_backbone, monkeypatch):
    import threading
    gate = threading.Event()
    real_start = TokenCache._start_pool
    monkeypatch.setattr(TokenCache, "_start_pool", lambda self: (gate.wait(60), real_start(self)))
    later = [f"a photo of later thing {i}  $ " for i in range(30)]
    now = [f"a photo of thing {i}  $ " for i in range(30)]
    cache = TokenCache(micro_backbone.tokenizer, workers=2, parallel_from=1)
    try:
        cache.prefetch(later)  # the workers are not up: queued, nothing waits
        assert cache._deferred == [later] and not cache._pending
        got_now = cache.stack(now)  # needed now: tokenized in this process
        assert cache._pool is None and not cache._pending
        gate.set()
        cache._ready_pool()
        cache.ensure([])  # the first call after the workers are up sends them the queue
        assert not cache._deferred and len(cache._pending) == 1
        got_later = cache.stack(later)
    finally:
        cache.close()
    for texts, got in ((now, got_now), (later, got_later)):
        full = micro_backbone.tokenize(texts)
        assert torch.equal(got, full[:, :got.shape[1]]) and not full[:, got.shape[1]:].any()
