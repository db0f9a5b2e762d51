"""phi (SEARLE section 3.2): shapes, NT-Xent against a hand computation, training, checkpoints."""
import math

import pytest
import torch

from searle_lib.config import ConfigError, PhiConfig
from searle_lib.phi import Phi, load_phi, nt_xent, phi_tokens, save_phi, train_phi


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
    import dataclasses
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
