"""A tiny GPT-2 causal LM trained from scratch, so the Hugging Face phrase path runs for real offline.

SEARLE generates its regularisation phrases with GPT-Neo 2.7B (reference section 4, official
``src/gpt_phrases_generation.py``). No LM can be downloaded here, so for tests and for the "language model choice"
study we train our own: a byte-level BPE tokenizer (``tokenizers``) wrapped as a ``PreTrainedTokenizerFast`` and a
2-layer ``GPT2LMHeadModel`` fitted briefly on given texts (e.g. captions of the embedded world). Both are written
with ``save_pretrained`` into one folder, which :func:`searle_lib.phrases.generate_phrases` loads through
``AutoModelForCausalLM`` / ``AutoTokenizer`` like any hub model (``phrases.lm_name: <folder>``).

The folder is a cache: ``tiny_lm.json`` records a hash of the texts and every setting, and a call whose hash matches
returns at once.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

__all__ = ["EOS", "train_tiny_lm", "tiny_lm_hash"]

EOS = "<|endoftext|>"  # GPT-2's end-of-text token; also used as pad, as the official code does
_MARKER = "tiny_lm.json"
_FORMAT = 1  # bump when the training recipe changes, so old caches are rebuilt


def tiny_lm_hash(texts: Sequence[str], settings: dict) -> str:
    """Content hash of the training texts and settings (the cache key)."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": _FORMAT, **settings}, sort_keys=True).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _train_tokenizer(texts: Sequence[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Byte-level BPE as GPT-2/GPT-Neo: any string round-trips exactly, so a concept never seen in training still
    # decodes to itself (the official filtering depends on that).
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS)


def train_tiny_lm(
    texts: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    steps: int = 300,
    seed: int = 0,
    vocab_size: int = 512,
    n_layer: int = 2,
    n_embd: int = 96,
    n_head: int = 4,
    n_positions: int = 64,
    batch_size: int = 32,
    lr: float = 3e-3,
    threads: int | None = 1,
    progress: bool = True,
) -> Path:
    """Train (or reuse) a tiny GPT-2 LM on ``texts`` and save model + tokenizer in ``out_dir``.

    Args:
        texts: training sentences, e.g. "a photo of a red circle that is next to a blue square."; each is
            followed by the end-of-text token so the model learns to stop.
        out_dir: folder to write; reused as is when its ``tiny_lm.json`` hash matches ``texts`` and settings.
        steps, batch_size, lr: AdamW steps, sequences per step and peak learning rate (cosine decay).
        seed: seeds initialisation and batch sampling.
        threads: torch CPU threads while training (restored afterwards). 1 by default: matrices this small gain
            nothing from more, and on shared cores OpenMP spinning made 2 threads 5x slower than 1 (measured).
            ``None`` keeps the current setting. Not part of the cache key (results do not depend on it on CPU).
        vocab_size, n_layer, n_embd, n_head, n_positions: tokenizer and ``GPT2Config`` sizes.
        progress: show a tqdm bar.
    Returns:
        ``out_dir`` as a Path, loadable with ``AutoModelForCausalLM.from_pretrained(out_dir)``.
    """
    texts = [str(t) for t in texts]
    if not texts or not any(t.strip() for t in texts):
        raise ValueError("train_tiny_lm: no training texts given (pass a list of sentences)")
    settings = dict(steps=steps, seed=seed, vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd,
                    n_head=n_head, n_positions=n_positions, batch_size=batch_size, lr=lr)
    key = tiny_lm_hash(texts, settings)
    out = Path(out_dir)
    marker = out / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("hash") == key:
                return out
        except json.JSONDecodeError:
            pass  # a damaged marker means a damaged cache: rebuild below
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} exists, is not empty and holds no {_MARKER}: it is not a tiny-LM cache, so it is not "
            "overwritten. Pass an empty or new folder."
        )

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        _train(texts, out, key, settings, progress)
    finally:
        torch.set_num_threads(old_threads)
    return out


def _train(texts: list[str], out: Path, key: str, settings: dict, progress: bool) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    st = settings
    steps, batch_size, n_pos = st["steps"], st["batch_size"], st["n_positions"]
    t0 = time.perf_counter()
    torch.manual_seed(st["seed"])
    tokenizer = _train_tokenizer(texts, st["vocab_size"])
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_pos, n_embd=st["n_embd"], n_layer=st["n_layer"],
                        n_head=st["n_head"], bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = GPT2LMHeadModel(config)
    seqs = [ids[: n_pos - 1] + [eos] for ids in tokenizer(texts)["input_ids"]]

    gen = torch.Generator().manual_seed(st["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=st["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(  # 20 warm-up steps, then cosine decay
        opt, lambda i: min(1.0, (i + 1) / 20) * 0.5 * (1 + math.cos(math.pi * i / steps)))
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="tiny LM", disable=not progress):
        batch = [seqs[i] for i in torch.randint(len(seqs), (batch_size,), generator=gen).tolist()]
        width = max(len(q) for q in batch)
        ids = torch.full((batch_size, width), eos, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)  # padding is not a target
        for r, q in enumerate(batch):
            ids[r, : len(q)] = labels[r, : len(q)] = torch.tensor(q)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()

    # Write to a sibling folder and swap it in, so an interrupted run never leaves a folder that looks complete.
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    first, last = sum(losses[:10]) / len(losses[:10]), sum(losses[-10:]) / len(losses[-10:])
    (tmp / _MARKER).write_text(json.dumps({
        "hash": key, "settings": settings, "n_texts": len(texts), "loss_first10": first, "loss_last10": last,
        "seconds": round(time.perf_counter() - t0, 2), "vocab_size": len(tokenizer),
        "n_params": sum(p.numel() for p in model.parameters()),
    }, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
