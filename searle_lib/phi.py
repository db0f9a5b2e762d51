"""The textual inversion network phi and its distillation from OTI (SEARLE section 3.2; official ``phi.py``,
``train_phi.py``).

phi is an MLP (d_img -> 4 d_img -> 4 d_img -> d_token, GELU, dropout 0.5) applied to the raw CLIP image feature.
It is trained on precomputed image features with

    L = l_distil * L_distil + l_gpt * L_gpt       (l_distil = 1, l_gpt = 0.75; not divided by the sum)

where L_distil is the symmetric NT-Xent loss (tau 0.25) between phi's outputs and the images' EMA OTI tokens, and
L_gpt = 1 - cos(E_T*(phrase with every occurrence of its concept -> " $ ", phi(f_I)), E_T(phrase)) with the concept
drawn from the image's top-150 concepts. AdamW lr 1e-4, wd 0.01, batch 256 (drop_last), 100 epochs.

Two computations of L_gpt with the same draws and the same numbers up to float rounding (``train_phi(fast=)``):
- reference: the straightforward one, per step: tokenize the step's phrases and prompts with the Python BPE,
  encode the new plain phrases, run the " $ " prompts through the text modules.
- fast (default): an epoch's draws are made before its first step (the same generator calls in the same order;
  nothing else reads that generator), then the fast OTI machinery (``_oti_fast``) is reused: each string is
  tokenized once per run, the epoch's distinct prompts sit in one ``TokenTable`` split at the placeholder (each
  distinct prefix before it, which never sees phi's token, is computed once per epoch), each plain phrase is
  encoded once per run (with its concept's phrase list, ``FeatureCache``), and a step runs only
  placeholder..end-of-text of its longest prompt (exact: the tower is causal and pools at end-of-text), the last
  block only at end-of-text.

Deliberate deviation: the official code redraws the whole batch of concepts until none is a filtered-out concept;
we draw each image's concept among its usable ones directly. Both give each image a uniform draw over its usable
concepts, independently of the other images (conditioning a product distribution on a product event).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._oti_fast import PARALLEL_FROM, FeatureCache, TokenCache, TokenTable, tower_for
from .backbones import Backbone
from .chunkstore import ResumeMismatchError, atomic_output
from .config import ConfigError, PhiConfig
from .oti import replace_concept
from .text_encoding import encode_texts, encode_tokens


class Phi(nn.Module):
    """The official phi MLP; state-dict keys match the released ``SEARLE_ViT-*.pt`` (``layers.{0,3,6}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, dropout: float = 0.5):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(p=dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Dropout(p=dropout),
            nn.Linear(hidden_dim, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @classmethod
    def for_backbone(cls, backbone: Backbone, cfg: PhiConfig) -> "Phi":
        d = backbone.feature_dim
        return cls(d, cfg.hidden_mult * d, backbone.token_dim, cfg.dropout)


def nt_xent(pred: torch.Tensor, target: torch.Tensor, tau: float = 0.25) -> torch.Tensor:
    """Symmetric NT-Xent (PALAVRA / SEARLE): 2B normalised vectors, each anchor's positive is its counterpart,
    the denominator sums over every other vector (positive, same-side and cross-side negatives)."""
    z = F.normalize(torch.cat([pred, target]).float(), dim=-1)
    n = pred.shape[0]
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, pos)


def save_phi(phi: Phi, path: str | Path, **extra) -> Path:
    """Official checkpoint layout ``{"Phi": state_dict, ...}`` (plus e.g. ``epoch``), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save({"Phi": phi.state_dict(), **extra}, tmp)
    return path


def load_phi(path: str | Path, backbone: Backbone | None = None, dropout: float = 0.5) -> Phi:
    """Load an official or our phi checkpoint safely (``weights_only``); check it fits ``backbone``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"phi checkpoint {path} not found; train it (`searle train-phi`) or download the "
                                "released SEARLE_ViT-B32.pt / SEARLE_ViT-L14.pt (GitHub release 'weights')")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a class or function: never run code from a file
        raise ConfigError(f"{path} holds Python objects other than tensors and plain data, so it was not loaded "
                          f"(torch.load weights_only=True; first refusal: {str(e).splitlines()[-1][:160]}). Use "
                          "a plain {'Phi': state_dict} checkpoint (phi.save_phi or the released weights)") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ConfigError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160]}); it may be truncated: download or train it again") from None
    state = ckpt.get("Phi", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "layers.0.weight" not in state:
        raise ConfigError(f"{path} is not a phi checkpoint (expected {{'Phi': state_dict}} with layers.0/3/6)")
    d_in, d_hidden, d_out = state["layers.0.weight"].shape[1], state["layers.0.weight"].shape[0], \
        state["layers.6.weight"].shape[0]
    if backbone is not None and (d_in, d_out) != (backbone.feature_dim, backbone.token_dim):
        raise ConfigError(f"{path} maps {d_in} -> {d_out} but backbone {backbone.name} has image features of "
                          f"{backbone.feature_dim} and token embeddings of {backbone.token_dim}; use the phi "
                          "trained for this backbone")
    phi = Phi(d_in, d_hidden, d_out, dropout)
    phi.load_state_dict(state)
    return phi.eval()


class PhraseFeatureCache:
    """Plain CLIP features of phrases, computed once each on first use (they never depend on phi)."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.feats: dict[str, torch.Tensor] = {}

    def get(self, phrases: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(p for p in phrases if p not in self.feats))
        if missing:
            for p, f in zip(missing, encode_texts(self.backbone, missing, batch_size=1024)):
                self.feats[p] = f
        return torch.stack([self.feats[p] for p in phrases])


def _draw(idx: torch.Tensor, usable: Sequence[Sequence[str]], phrases: Mapping[str, Sequence[str]],
          gen: torch.Generator) -> tuple[list[int], list[tuple[str, str]]]:
    """One step's L_gpt draws: the batch positions of the images with usable concepts and, for each in batch
    order, a (phrase, concept): first the concept, then one of its phrases, uniformly from ``gen``."""
    sel, picks = [], []
    for k, i in enumerate(idx.tolist()):
        cs = usable[i]
        if cs:
            c = cs[int(torch.randint(len(cs), (1,), generator=gen))]
            ps = phrases[c]
            picks.append((ps[int(torch.randint(len(ps), (1,), generator=gen))], c))
            sel.append(k)
    return sel, picks


def _epoch_draws(n: int, batch_size: int, gen: torch.Generator, usable: Sequence[Sequence[str]] | None,
                 phrases: Mapping[str, Sequence[str]] | None) -> tuple[list[torch.Tensor], list | None]:
    """An epoch's shuffled batches (drop_last) and, with ``usable``, every step's ``_draw`` in step order."""
    order = torch.randperm(n, generator=gen)
    batches = [order[s * batch_size:(s + 1) * batch_size] for s in range(n // batch_size)]
    return batches, None if usable is None else [_draw(idx, usable, phrases, gen) for idx in batches]


@dataclass
class _GptStep:
    sel: torch.Tensor  # batch positions of the images with a draw
    rows: torch.Tensor  # their prompts' rows in the epoch's TokenTable
    length: int  # positions the step computes (its longest suffix, or prompt when not split)
    plain: torch.Tensor  # their plain phrases' rows in the epoch's features


class FastGpt:
    """L_gpt's inputs for the fast path (see the module docstring), prepared once per epoch.

    Whatever depends in its last bits on what it was batched with is computed so that a run resumed at any epoch
    computes bit for bit what an uninterrupted run computes: prefix keys and values from the epoch's draws alone,
    in first-draw order; plain features once per run, each with its concept's phrase list (``FeatureCache``).
    Token rows are exact whatever the batch, so they are kept across epochs
    (up to ``max_token_rows`` strings, then started over); with ``workers`` > 1 they are made in worker processes,
    the next epoch's while this one trains (``prefetch``).
    """

    def __init__(self, backbone: Backbone, phrases: Mapping[str, Sequence[str]], workers: int = 0,
                 max_token_rows: int = 2_000_000, parallel_from: int = PARALLEL_FROM):
        self.backbone, self.phrases = backbone, phrases
        self.tower = tower_for(backbone)
        self.tokens = TokenCache(backbone.tokenizer, workers=workers, parallel_from=parallel_from)
        self.plain = FeatureCache(self.tower, self.tokens)
        self.max_token_rows = max_token_rows
        self.table: TokenTable | None = None
        self.feats: torch.Tensor | None = None

    @staticmethod
    def _strings(draws: Sequence[tuple[list[int], list[tuple[str, str]]]]
                 ) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """The distinct prompts (every occurrence of the concept -> " $ ") and (phrase, concept) draws, in
        first-draw order."""
        prompts: dict[str, int] = {}
        plain: dict[tuple[str, str], int] = {}
        for _, picks in draws:
            for p, c in picks:
                prompts.setdefault(replace_concept(p, c, "all"), len(prompts))
                plain.setdefault((p, c), len(plain))
        return prompts, plain

    def prefetch(self, draws: Sequence[tuple[list[int], list[tuple[str, str]]]]) -> None:
        """Start tokenizing a coming epoch's strings in the worker processes (no-op without workers)."""
        prompts, plain = self._strings(draws)
        lists = {c: self.phrases[c] for _, c in plain}  # plain phrases are encoded with their concept's list
        self.tokens.prefetch(list(prompts) + self.plain.unencoded(lists))

    def prepare(self, draws: Sequence[tuple[list[int], list[tuple[str, str]]]]) -> list[_GptStep | None]:
        """Tokenize and encode what the epoch's ``draws`` (one ``_draw`` per step) need; one entry per step
        (``None``: no image of the step has a usable concept). Call under the training autocast."""
        if len(self.tokens.rows) > self.max_token_rows:
            self.tokens.rows.clear()
        self.table = self.feats = None
        prompts, plain = self._strings(draws)
        if not prompts:
            return [None] * len(draws)
        self.tokens.ensure(list(prompts))
        tokens = self.tokens.stack(list(prompts))
        missing = ~(tokens == self.backbone.placeholder_id).any(1)
        if bool(missing.any()):
            bad = list(prompts)[int(missing.nonzero()[0])]
            raise ValueError(f"the GPT-loss prompt {bad!r} has no placeholder token (id "
                             f"{self.backbone.placeholder_id}): its concept does not occur in its phrase (or only "
                             "past the text context)")
        self.table = TokenTable(self.backbone, tokens, split_prefix=self.tower.functional)
        self.feats = self.plain.get(list(plain), self.phrases)
        dev = self.table.tokens.device
        steps = []
        for sel, picks in draws:
            r = [prompts[replace_concept(p, c, "all")] for p, c in picks]
            steps.append(_GptStep(torch.tensor(sel, device=dev), torch.tensor(r, device=dev),
                                  int(self.table.host_lengths[r].max()),
                                  torch.tensor([plain[pc] for pc in picks], device=dev)) if r else None)
        return steps

    def close(self) -> None:
        self.tokens.close()

    def loss(self, step: _GptStep, pred: torch.Tensor) -> torch.Tensor:
        """Mean of 1 - cos(E_T*(prompt, phi token), E_T(phrase)) over the step's draws."""
        out = self.tower(self.table, step.rows, step.length, pred[step.sel])
        return (1 - F.cosine_similarity(out.float(), self.feats[step.plain].float(), dim=-1)).mean()


@dataclass
class PhiHistory:
    epochs: list[dict] = field(default_factory=list)  # one row per epoch: losses, validation metrics
    selected_epoch: int | None = None  # with phi.select="val": the epoch whose weights were kept


def _rng_state(gen: torch.Generator) -> dict:
    """RNG states as tensors and plain lists, so ``phi_last.pt`` loads with ``torch.load(weights_only=True)``."""
    version, state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "gen": gen.get_state(), "python": [version, list(state), gauss]}


def _set_rng_state(rng: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    gen.set_state(rng["gen"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))


def data_fingerprint(features: torch.Tensor, targets: torch.Tensor, usable: Sequence[Sequence[str]] | None,
                     phrases: Mapping[str, Sequence[str]] | None) -> str:
    """Hash of everything phi trains on (features, OTI targets, per-image usable concepts and their phrases), so
    a resumed run never continues on other images (the checkpoint records it)."""
    h = hashlib.sha256()
    for t in (features, targets):
        t = t.detach().float().cpu().contiguous()
        h.update(f"{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    if usable is not None and phrases:
        for cs in usable:
            h.update("\0".join(cs).encode() + b"\1")
        for c in sorted({c for cs in usable for c in cs}):
            h.update(c.encode() + b"\2" + "\0".join(phrases[c]).encode() + b"\1")
    return h.hexdigest()[:16]


def _load_last(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # never written half by us (atomic), so someone else wrote or damaged it
        raise ConfigError(f"{path} cannot be read as a phi resume checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160]}). Delete it or pass force_restart=True "
                          "(CLI: --force-restart) to start over") from None


def _restore_best(ckpt_dir: Path, epochs: list[dict]) -> tuple[float, int, dict | None]:
    """The best validation epoch so far (last of the ties, as in the loop) and its weights from phi_best.pt."""
    scored = [(r["val_score"], r["epoch"]) for r in epochs if "val_score" in r]
    if not scored:
        return float("-inf"), -1, None
    score, epoch = max(scored)
    best_path = ckpt_dir / "phi_best.pt"
    state = None
    if best_path.is_file():
        ck = torch.load(best_path, map_location="cpu", weights_only=True)
        if ck.get("epoch") == epoch:  # else a kill fell between phi_best and phi_last: the epoch is redone
            state = ck["Phi"]
    return score, epoch, state


def train_phi(backbone: Backbone, features: torch.Tensor, targets: torch.Tensor,
              image_concepts: Sequence[Sequence[str]] | None, phrases: Mapping[str, Sequence[str]] | None,
              cfg: PhiConfig, *, seed: int = 42, out_dir: str | Path | None = None,
              validate: Callable[[Phi], dict] | None = None, force_restart: bool = False,
              progress: bool = True, fast: bool = True,
              tokenizer_workers: int | None = None) -> tuple[Phi, PhiHistory]:
    """Distil phi from OTI tokens.

    Args:
        features: raw CLIP image features [N, d_img] (precomputed once).
        targets: EMA OTI tokens [N, d_token] of the same images.
        image_concepts: per image, its ranked concepts (the first ``cfg.top_k_concepts`` are sampled, raw strings).
        phrases: usable concept -> phrases; ``None`` or empty disables L_gpt.
        out_dir: checkpoints (``phi_last.pt`` with optimizer and RNG state every epoch, ``phi_<epoch>.pt``);
            an existing ``phi_last.pt`` of the same config, seed and data resumes training (bit-identically on
            CPU); one of another run raises ``ResumeMismatchError``.
        force_restart: delete ``out_dir/checkpoints`` of an earlier run and start over.
        validate: called with phi in eval mode after an epoch; returns metrics (official: CIRR val).
        fast: L_gpt through ``FastGpt`` (default) or the per-step reference computation (module docstring). Same
            draws, same numbers up to float rounding (``tests/test_phi.py``); a resumed run is bit-identical to
            an uninterrupted one when both use the same setting.
        tokenizer_workers: fast path: processes that tokenize new phrases, the next epoch's while the current one
            trains (default: 0 on CPU, where the cores are busy with the model; up to 8 on CUDA). Tokens are
            exact either way.
    """
    dev = backbone.device
    torch.manual_seed(seed)
    phi = Phi.for_backbone(backbone, cfg).to(dev)
    opt = torch.optim.AdamW(phi.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = torch.float16 if dev.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp is not None)
    gen = torch.Generator().manual_seed(seed)
    random.seed(seed)
    history, start = PhiHistory(), 0
    if cfg.select not in ("last", "val"):
        raise ConfigError(f"phi.select={cfg.select!r}: expected 'last' or 'val'")
    best: tuple[float, int, dict | None] = (float("-inf"), -1, None)
    n = features.shape[0]
    if n < cfg.batch_size:
        raise ConfigError(f"phi.batch_size={cfg.batch_size} is larger than the {n} training images "
                          "(batches drop the remainder, as the official code); lower phi.batch_size")
    usable = None
    if phrases and image_concepts is not None and cfg.lambda_gpt > 0:
        usable = [[c for c in cs[:cfg.top_k_concepts] if c in phrases] for cs in image_concepts]
    data = data_fingerprint(features, targets, usable, phrases)
    ckpt_dir = Path(out_dir) / "checkpoints" if out_dir else None
    last_path = ckpt_dir / "phi_last.pt" if ckpt_dir else None
    if ckpt_dir and force_restart and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # also phi_best.pt / phi_<epoch>.pt of the old run, which would otherwise linger
    if last_path and last_path.is_file():
        ckpt = _load_last(last_path)
        expected = {"config": cfg.__dict__, "seed": seed, "n_images": n, "data": data}
        diff = [k for k, v in expected.items() if ckpt.get(k) != v]
        if diff:
            raise ResumeMismatchError(
                f"{last_path} belongs to another phi run (differs in: {', '.join(diff)}). Nothing was changed. "
                "Use another output folder, or pass force_restart=True (CLI: --force-restart) to start over")
        phi.load_state_dict(ckpt["Phi"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], gen)
        history.epochs = ckpt["history"]
        start = ckpt["epoch"] + 1
        if cfg.select == "val":
            best = _restore_best(ckpt_dir, history.epochs)
    features, targets = features.float(), targets.float()
    fast_gpt = None
    if usable is not None and fast:
        if tokenizer_workers is None:
            tokenizer_workers = min(8, (os.cpu_count() or 1) // 2) if dev.type == "cuda" else 0
        fast_gpt = FastGpt(backbone, phrases, tokenizer_workers)
    try:
        for epoch in range(start, cfg.epochs):
            # A phrase's feature depends in its last bits on the batch it was encoded in, so the reference
            # path's cache starts empty every epoch (FastGpt encodes in fixed groups instead): a run resumed at
            # any epoch then computes exactly what an uninterrupted run computes.
            cache = PhraseFeatureCache(backbone)
            phi.train()
            sums = {"loss": 0.0, "distil": 0.0, "gpt": 0.0}
            steps = n // cfg.batch_size
            # fast: the whole epoch's draws first (the same generator calls in the same order as per step)
            batches, draws = _epoch_draws(n, cfg.batch_size, gen, usable if fast_gpt else None, phrases)
            if fast_gpt is not None:
                with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                    gpt_steps = fast_gpt.prepare(draws)
                if fast_gpt.tokens.workers > 1 and epoch + 1 < cfg.epochs:  # the next epoch's, on a copy of gen
                    peek = torch.Generator().set_state(gen.get_state())
                    fast_gpt.prefetch(_epoch_draws(n, cfg.batch_size, peek, usable, phrases)[1])
            for s in tqdm(range(steps), disable=not progress, desc=f"phi epoch {epoch}", leave=False):
                idx = batches[s]
                with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                    pred = phi(features[idx].to(dev))
                    l_distil = nt_xent(pred, targets[idx].to(dev), cfg.tau)
                    loss = cfg.lambda_distil * l_distil
                    l_gpt = torch.zeros((), device=dev)
                    if fast_gpt is not None:
                        if gpt_steps[s] is not None:
                            l_gpt = fast_gpt.loss(gpt_steps[s], pred)
                            loss = loss + cfg.lambda_gpt * l_gpt
                    elif usable is not None:  # reference: everything per step
                        sel, picks = _draw(idx, usable, phrases, gen)
                        if picks:
                            target = cache.get([p for p, _ in picks]).to(dev)
                            tok = backbone.tokenize([replace_concept(p, c, "all") for p, c in picks])
                            out = encode_tokens(backbone, tok, pred[torch.tensor(sel, device=dev)])
                            l_gpt = (1 - F.cosine_similarity(out.float(), target.float(), dim=-1)).mean()
                            loss = loss + cfg.lambda_gpt * l_gpt
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sums["loss"] += float(loss.detach())
                sums["distil"] += float(l_distil.detach())
                sums["gpt"] += float(l_gpt.detach())
            row = {"epoch": epoch, **{k: v / steps for k, v in sums.items()}}
            if validate is not None and cfg.validate_every and (epoch + 1) % cfg.validate_every == 0:
                phi.eval()
                row.update(validate(phi))
            history.epochs.append(row)
            if cfg.select == "val" and "val_score" in row and row["val_score"] >= best[0]:
                best = (row["val_score"], epoch, {k: v.detach().clone() for k, v in phi.state_dict().items()})
                if out_dir:
                    save_phi(phi, Path(out_dir) / "checkpoints" / "phi_best.pt", epoch=epoch)
            if out_dir:
                ck = Path(out_dir) / "checkpoints"
                if cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0:
                    save_phi(phi, ck / f"phi_{epoch}.pt", epoch=epoch)
                save_phi(phi, last_path, epoch=epoch, optimizer=opt.state_dict(), scaler=scaler.state_dict(),
                         rng=_rng_state(gen), config=cfg.__dict__, seed=seed, n_images=n, data=data,
                         history=history.epochs)
    finally:
        if fast_gpt is not None:
            fast_gpt.close()
    if cfg.select == "val":
        if best[2] is None and ckpt_dir and (ckpt_dir / "phi_best.pt").is_file():
            best = (best[0], best[1], load_phi(ckpt_dir / "phi_best.pt").state_dict())
        if best[2] is None:
            raise ConfigError("phi.select='val' needs a validate function returning 'val_score'")
        phi.load_state_dict(best[2])
        history.selected_epoch = best[1]
    return phi.eval(), history


@torch.no_grad()
def phi_tokens(phi: Phi, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Pseudo-tokens for raw image features (phi in eval mode)."""
    phi.eval()
    dev = next(phi.parameters()).device
    return torch.cat([phi(features[i:i + batch_size].to(dev).float()).cpu()
                      for i in range(0, len(features), batch_size)]) if len(features) else features
