"""phi (SEARLE section 3.2): shapes, NT-Xent against a hand computation, training, checkpoints, and the fast
GPT-loss path against the straightforward computation."""
import dataclasses
import math

import pytest
import torch

from searle_lib.config import ConfigError, PhiConfig
import torch.nn.functional as F

from searle_lib.oti import replace_concept
from searle_lib.phi import FastGpt, Phi, _draw, load_phi, nt_xent, phi_tokens, save_phi, train_phi
from searle_lib.text_encoding import encode_texts, encode_tokens


def test_official_architecture_and_shapes():
    phi = Phi(512, 2048, 512, 0.5)
    assert [k for k in phi.state_dict()] == ["layers.0.weight", "layers.0.bias", "layers.3.weight", "layers.3.bias",
                                             "layers.6.weight", "layers.6.bias"]
    x = torch.randn(4, 512, requires_grad=True)
    y = phi(x)
    assert y.shape == (4, 512)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_nt_xent_matches_hand_computation():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    tau = 0.5
    z = [p[0], p[1], t[0], t[1]]
    pos = {0: 2, 1: 3, 2: 0, 3: 1}
    total = 0.0
    for i in range(4):
        num = math.exp(float(z[i] @ z[pos[i]]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(4) if k != i)
        total += -math.log(num / den)
    assert nt_xent(p, t, tau).item() == pytest.approx(total / 4, rel=1e-6)


def test_nt_xent_is_low_for_matching_pairs():
    a = torch.randn(8, 16)
    assert nt_xent(a, a.clone()) < nt_xent(a, torch.randn(8, 16))


def test_training_lowers_loss_and_checkpoints_round_trip(micro_backbone, tmp_path):
    b = micro_backbone
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(64, b.feature_dim, generator=g)
    targets = torch.randn(64, b.token_dim, generator=g)
    concepts = [["red circle", "dog"]] * 64
    phrases = {"red circle": ["a photo of red circle that is big"]}
    cfg = PhiConfig(batch_size=16, epochs=6, dropout=0.0, lr=1e-3, checkpoint_every=3)
    phi, hist = train_phi(b, feats, targets, concepts, phrases, cfg, out_dir=tmp_path, progress=False)
    losses = [r["loss"] for r in hist.epochs]
    assert losses[-1] < losses[0] - 0.5 and all(r["gpt"] > 0 for r in hist.epochs)
    assert (tmp_path / "checkpoints" / "phi_2.pt").is_file() and (tmp_path / "checkpoints" / "phi_5.pt").is_file()
    again = load_phi(tmp_path / "checkpoints" / "phi_last.pt", b)
    torch.testing.assert_close(phi_tokens(again, feats), phi_tokens(phi, feats))
    path = save_phi(phi, tmp_path / "official.pt")
    assert set(torch.load(path, weights_only=True)) == {"Phi"}


def test_resume_continues_bit_identically(micro_backbone, tmp_path):
    b = micro_backbone
    g = torch.Generator().manual_seed(0)
    feats, targets = torch.randn(32, b.feature_dim, generator=g), torch.randn(32, b.token_dim, generator=g)
    phrases = {"red circle": ["a photo of red circle that is big", "red circle on a table"]}
    concepts = [["red circle"]] * 32
    cfg4 = PhiConfig(batch_size=8, epochs=4)
    ref, _ = train_phi(b, feats, targets, concepts, phrases, cfg4, out_dir=tmp_path / "a", progress=False)
    # run 2 epochs, "die", then rerun asking for 4: continues from the checkpoint
    train_phi(b, feats, targets, concepts, phrases, dataclasses.replace(cfg4, epochs=2), out_dir=tmp_path / "b",
              progress=False)
    ck = torch.load(tmp_path / "b" / "checkpoints" / "phi_last.pt", weights_only=False)
    ck["config"] = cfg4.__dict__  # the interrupted run had the same config
    torch.save(ck, tmp_path / "b" / "checkpoints" / "phi_last.pt")
    resumed, hist = train_phi(b, feats, targets, concepts, phrases, cfg4, out_dir=tmp_path / "b", progress=False)
    assert len(hist.epochs) == 4
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_wrong_width_checkpoint_is_refused(micro_backbone, tmp_path):
    save_phi(Phi(512, 2048, 512, 0.5), tmp_path / "b32.pt")
    with pytest.raises(ConfigError, match="trained for this backbone"):
        load_phi(tmp_path / "b32.pt", micro_backbone)


def test_batch_larger_than_data_is_a_clear_error(micro_backbone):
    b = micro_backbone
    with pytest.raises(ConfigError, match="phi.batch_size"):
        train_phi(b, torch.randn(4, b.feature_dim), torch.randn(4, b.token_dim), None, None,
                  PhiConfig(batch_size=8, epochs=1), progress=False)


# Phrases that exercise the fast path: the concept at the start (prefix = start-of-text only), twice (every
# occurrence becomes " $ ", only the first gets phi's token), other prefixes, different lengths; "green" has no
# phrases, so images ranked only on it have no draw.
GPT_PHRASES = {"red circle": ["a photo of red circle that is big", "red circle next to another red circle",
                              "red circle"],
               "blue square": ["we see a blue square here in this image today", "a blue square",
                               "blue square and blue square on a table"]}
GPT_CONCEPTS = [["red circle", "blue square"], ["green"], ["blue square", "green"], ["green", "red circle"]]


def _reference_gpt_loss(b, picks, tokens):
    """L_gpt as the official code writes it: plain phrases and " $ " prompts tokenized and encoded whole."""
    target = encode_texts(b, [p for p, _ in picks])
    out = encode_tokens(b, b.tokenize([replace_concept(p, c, "all") for p, c in picks]), tokens,
                        truncate_batch=False)
    return (1 - F.cosine_similarity(out, target, dim=-1)).mean()


def test_fast_gpt_loss_and_gradient_equal_the_reference(micro_backbone):
    b = micro_backbone
    usable = [[c for c in cs if c in GPT_PHRASES] for cs in GPT_CONCEPTS * 6]
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randperm(len(usable), generator=gen)[:8] for _ in range(3)]
    draws = [_draw(idx, usable, GPT_PHRASES, gen) for idx in batches]
    fast = FastGpt(b, GPT_PHRASES)
    steps = fast.prepare(draws)
    assert fast.table.split  # the prefix-split tower is what runs
    for (sel, picks), step, idx in zip(draws, steps, batches):
        assert sel == [k for k, i in enumerate(idx.tolist()) if usable[i]] and len(picks) == len(sel)
        pred = torch.randn(len(idx), b.token_dim, generator=torch.Generator().manual_seed(len(sel)))
        p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
        got = fast.loss(step, p1)
        want = _reference_gpt_loss(b, picks, p2[torch.tensor(sel)])
        # tolerance: float32 rounding of a differently batched and ordered computation (measured ~1e-7)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        got.backward()
        want.backward()
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-6)


def test_fast_draws_consume_the_generator_exactly_as_per_step_draws(micro_backbone):
    usable = [[c for c in cs if c in GPT_PHRASES] for cs in GPT_CONCEPTS * 4]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    idx = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    assert _draw(idx, usable, GPT_PHRASES, g1) == _draw(idx, usable, GPT_PHRASES, g2)
    assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_fast_training_equals_the_reference_training(micro_backbone, tmp_path, dropout):
    b = micro_backbone
    g = torch.Generator().manual_seed(0)
    n = 32
    feats, targets = torch.randn(n, b.feature_dim, generator=g), torch.randn(n, b.token_dim, generator=g) * 0.02
    concepts = (GPT_CONCEPTS * n)[:n]
    cfg = PhiConfig(batch_size=8, epochs=3, dropout=dropout, lr=1e-3)
    fast, h_fast = train_phi(b, feats, targets, concepts, GPT_PHRASES, cfg, out_dir=tmp_path / "f", progress=False)
    ref, h_ref = train_phi(b, feats, targets, concepts, GPT_PHRASES, cfg, out_dir=tmp_path / "r", progress=False,
                           fast=False)
    assert all(r["gpt"] > 0 for r in h_fast.epochs)
    for a, r in zip(h_fast.epochs, h_ref.epochs):  # the same draws: per-epoch losses agree to rounding
        for k in ("loss", "distil", "gpt"):
            assert a[k] == pytest.approx(r[k], rel=1e-5, abs=1e-7), (a["epoch"], k)
    # 12 AdamW steps at lr 1e-3 carry the rounding differences into the weights: 1e-5 relative bounds them
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    rng = [torch.load(p / "checkpoints" / "phi_last.pt", weights_only=True)["rng"] for p in (tmp_path / "f",
                                                                                             tmp_path / "r")]
    assert torch.equal(rng[0]["gen"], rng[1]["gen"]) and torch.equal(rng[0]["torch"], rng[1]["torch"])


def test_fast_resume_is_bit_identical(micro_backbone, tmp_path):
    b = micro_backbone
    g = torch.Generator().manual_seed(1)
    feats, targets = torch.randn(32, b.feature_dim, generator=g), torch.randn(32, b.token_dim, generator=g)
    concepts = (GPT_CONCEPTS * 8)[:32]
    cfg = PhiConfig(batch_size=8, epochs=3)
    ref, h_ref = train_phi(b, feats, targets, concepts, GPT_PHRASES, cfg, out_dir=tmp_path / "a", progress=False)
    train_phi(b, feats, targets, concepts, GPT_PHRASES, dataclasses.replace(cfg, epochs=1), out_dir=tmp_path / "b",
              progress=False)
    ck = torch.load(tmp_path / "b" / "checkpoints" / "phi_last.pt", weights_only=True)
    ck["config"] = cfg.__dict__
    torch.save(ck, tmp_path / "b" / "checkpoints" / "phi_last.pt")
    resumed, hist = train_phi(b, feats, targets, concepts, GPT_PHRASES, cfg, out_dir=tmp_path / "b", progress=False)
    assert hist.epochs == h_ref.epochs
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_phrase_without_its_concept_is_a_clear_error(micro_backbone):
    b = micro_backbone
    with pytest.raises(ValueError, match="'a photo of a dog' has no placeholder token"):
        train_phi(b, torch.randn(8, b.feature_dim), torch.randn(8, b.token_dim), [["cat"]] * 8,
                  {"cat": ["a photo of a dog"]}, PhiConfig(batch_size=8, epochs=1), progress=False)


def test_tokenizer_workers_and_next_epoch_prefetch_change_nothing(micro_backbone):
    b = micro_backbone
    usable = [[c for c in cs if c in GPT_PHRASES] for cs in GPT_CONCEPTS * 4]
    draws = [_draw(torch.randperm(16, generator=torch.Generator().manual_seed(s)), usable, GPT_PHRASES,
                   torch.Generator().manual_seed(s)) for s in range(3)]
    pooled = FastGpt(b, GPT_PHRASES, workers=2, parallel_from=1)  # every string through the worker processes
    try:
        pooled.tokens._ready_pool()  # started (prefetches made while they start wait in a queue)
        pooled.prefetch(draws)
        assert pooled.tokens._pending
        pooled.prepare(draws)
        alone = FastGpt(b, GPT_PHRASES)
        alone.prepare(draws)
        assert torch.equal(pooled.table.tokens, alone.table.tokens) and torch.equal(pooled.feats, alone.feats)
    finally:
        pooled.close()
    # train_phi with workers draws the next epoch on a copy of the generator: the run itself is unchanged
    g = torch.Generator().manual_seed(2)
    feats, targets = torch.randn(16, b.feature_dim, generator=g), torch.randn(16, b.token_dim, generator=g)
    concepts = (GPT_CONCEPTS * 4)[:16]
    cfg = PhiConfig(batch_size=8, epochs=2)
    runs = [train_phi(b, feats, targets, concepts, GPT_PHRASES, cfg, progress=False, tokenizer_workers=w)[0]
            for w in (0, 2)]
    for k, v in runs[0].state_dict().items():
        assert torch.equal(v, runs[1].state_dict()[k]), k
