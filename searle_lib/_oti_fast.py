"""Machinery of the fast OTI path (issue 6): token rows prepared once, a text-tower pass without per-step host work.

Everything here computes exactly what ``text_encoding.encode_tokens`` computes, only cheaper:

- ``WordMemoTokenizer``: open_clip's tokenizer output bit for bit, 7x faster on phrase corpora.
- ``TokenCache`` tokenizes each distinct string once per run (the Python BPE costs ~0.1 ms a string; a batch of
  1,024 images draws ~330,000 phrases), optionally in worker processes (started in the background: this process
  tokenizes meanwhile), and keeps the rows trimmed to their length.
- ``TokenTable`` holds a set of prompts on the device with each row's length, placeholder and end-of-text position
  computed once, so a step only gathers rows: the step's truncation length is known on the host before the loop
  (no device-to-host sync per step, which also keeps CUDA work queued back to back).
- ``FastTextTower`` runs open_clip's standard text blocks functionally: causal attention through
  ``scaled_dot_product_attention(is_causal=True)`` (flash kernels on GPU instead of an additive mask), and in the
  **last** block only the end-of-text position is computed (the only one pooled; every other position's last-block
  output is discarded by the official pooling). Towers with other block types fall back to the modules.
- Prefix split: a prompt's tokens before the placeholder never attend to the pseudo-token (causal mask), so their
  keys and values at every block are the same at every step. ``TokenTable(split_prefix=True)`` groups the rows by
  prefix, ``FastTextTower`` computes each distinct prefix once and each step runs only the suffix (placeholder to
  end-of-text), attending to the cached prefix and causally to itself.
- Packed rows: a step's rows need different lengths (phrases of 8 to 30 tokens). ``StepRows`` packs them
  (``Packing``): the matrix products, layer norms and MLPs run on each row's own positions only, attention alone
  is padded to the step's longest row. Rows never interact and attention is causal, so only padding is saved;
  unlike splitting the batch into length groups, the step still launches one pass of kernels.
- ``FeatureCache``: plain-phrase features, each computed once per run, in a fixed group (its concept's phrases).
- ``PhrasePool``: an image's phrase pool (15 concepts x 256 phrases) as offsets, not a list of 3,840 pairs.

The results equal the module path up to floating-point summation order (``tests/test_oti_fast.py``: features
and gradients within 1e-6 / 1e-5 relative).
"""
from __future__ import annotations

import bisect
import multiprocessing as mp
import re
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone
from .text_encoding import _pool_type, supports_truncation


class PhrasePool(Sequence):
    """(phrase, concept) pairs of an image's usable concepts in concept order, indexed without building the list."""

    def __init__(self, concepts: Sequence[str], phrases: Mapping[str, Sequence[str]] | None):
        self.concepts = [c for c in concepts if phrases and c in phrases and len(phrases[c])]
        self.lists = [phrases[c] for c in self.concepts] if phrases else []
        self.starts = np.cumsum([0] + [len(p) for p in self.lists]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, j: int) -> tuple[str, str]:
        j = int(j)
        if j < 0:
            j += len(self)
        if not 0 <= j < len(self):
            raise IndexError(j)
        k = bisect.bisect_right(self.starts, j) - 1
        return self.lists[k][j - self.starts[k]], self.concepts[k]

    def pairs(self, idx: np.ndarray) -> list[tuple[str, str]]:
        """``[self[j] for j in idx]`` for non-negative ``idx``, vectorised over the bisection."""
        ks = np.searchsorted(self.starts, idx, side="right") - 1
        lists, concepts, starts = self.lists, self.concepts, self.starts
        return [(lists[k][j - starts[k]], concepts[k]) for j, k in zip(idx.tolist(), ks.tolist())]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for c, ps in zip(self.concepts, self.lists):
            for p in ps:
                yield p, c

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented


# ------------------------------------------------------------------------------------------------ tokens
_PLAIN_ASCII = re.compile(r"[\x20-\x25\x27-\x7e]*")  # printable ASCII without '&'


class WordMemoTokenizer:
    """open_clip's ``SimpleTokenizer`` output, bit for bit, at a fraction of its cost on phrase corpora.

    ``SimpleTokenizer.encode`` cleans the text (ftfy, HTML unescaping twice, whitespace, lower case), splits it
    into words with one regex and byte-pair-encodes each word on its own. Two exact shortcuts:
    - on printable ASCII without ``&`` ftfy and ``html.unescape`` change nothing (they act on non-ASCII
      characters, control characters and entities), so only the whitespace and case steps run;
    - a word's ids depend on the word alone, so they are memoised per word.
    Any other text goes through the tokenizer's own cleaning. ``tests/test_oti_fast.py`` compares both on the
    phrase corpora and on random strings. Use ``wrap`` to get one (or the tokenizer itself when it is not a plain
    ``SimpleTokenizer``).
    """

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer
        self.lower = tokenizer.clean_fn.__name__ == "_clean_lower"
        self.memo: dict[str, list[int]] = {}
        self.context_length = tokenizer.context_length
        self.sot_token_id, self.eot_token_id = tokenizer.sot_token_id, tokenizer.eot_token_id

    @staticmethod
    def wrap(tokenizer: Callable) -> Callable:
        from open_clip.tokenizer import SimpleTokenizer
        ok = (type(tokenizer) is SimpleTokenizer and tokenizer.reduction_fn is None
              and getattr(tokenizer.clean_fn, "__name__", "") in ("_clean_lower", "_clean_whitespace"))
        return WordMemoTokenizer(tokenizer) if ok else tokenizer

    def encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        if _PLAIN_ASCII.fullmatch(text):
            text = " ".join(text.split())
            text = text.lower() if self.lower else text
        else:
            text = tok.clean_fn(text)
        out: list[int] = []
        for word in tok.pat.findall(text):
            ids = self.memo.get(word)
            if ids is None:
                bpe = tok.bpe("".join(tok.byte_encoder[b] for b in word.encode("utf-8")))
                ids = self.memo[word] = [tok.encoder[t] for t in bpe.split(" ")]
            out.extend(ids)
        return out

    def rows(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's ids with start and end of text, truncated as open_clip truncates (no padding)."""
        n = self.context_length
        out = []
        for text in texts:
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = self.eot_token_id
            out.append(np.asarray(ids, dtype=np.int32))
        return out

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        rows = self.rows(texts)
        out = torch.zeros(len(rows), context_length or self.context_length, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.from_numpy(r[:out.shape[1]].astype(np.int64))
        return out


def _rows(tokenizer: Callable, texts: list[str]) -> list[np.ndarray]:
    """Trimmed int32 token rows of ``texts`` (directly from a ``WordMemoTokenizer``, else via the padded tensor)."""
    if isinstance(tokenizer, WordMemoTokenizer):
        return tokenizer.rows(texts)
    return _trim(tokenizer(texts))


_WORKER_TOKENIZER: Callable | None = None


def _init_worker(tokenizer: Callable) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer
    torch.set_num_threads(1)


def _tokenize_trimmed(texts: list[str]) -> list[np.ndarray]:
    return _rows(_WORKER_TOKENIZER, texts)


def _trim(tokens: torch.Tensor) -> list[np.ndarray]:
    arr = tokens.numpy().astype(np.int32)
    lengths = (arr != 0).cumsum(1).argmax(1) + 1  # last non-padding position + 1
    return [row[:n].copy() for row, n in zip(arr, lengths)]


PARALLEL_FROM = 20_000  # strings below which one call is tokenized in this process, not by the workers


class TokenCache:
    """Token rows of strings, each tokenized once (trimmed int32 arrays); ``workers`` > 1 uses processes.

    The worker processes start in the background as soon as the cache is made (their server imports torch and
    open_clip: seconds). Until they are up, texts needed now are tokenized in this process and prefetches wait
    in a queue, sent to the workers at the first ``ensure`` after they are up.
    """

    def __init__(self, tokenizer: Callable, workers: int = 0, parallel_from: int = PARALLEL_FROM):
        self.tokenizer = WordMemoTokenizer.wrap(tokenizer)
        self.rows: dict[str, np.ndarray] = {}
        self.workers = workers
        self.parallel_from = parallel_from
        self._pool = None
        self._starter: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._pending: list = []  # (texts, AsyncResult) of prefetches not yet collected
        self._inflight: set[str] = set()
        self._deferred: list[list[str]] = []  # prefetches made while the workers were starting
        self._lock = threading.Lock()  # the starting thread hands over the pool, or ends it after ``close``
        self._closed = False
        if workers > 1:
            # not a daemon: a process that ends while the pool starts waits for it (then ended, see ``close``)
            # instead of cutting the server's read of the pool's pickled arguments short
            self._starter = threading.Thread(target=self._start_pool, name="tokenizer-pool-start")
            self._starter.start()

    def _start_pool(self) -> None:
        try:  # forkserver: clean children, whatever threads or CUDA state this process has
            ctx = mp.get_context("forkserver")
            # The server imports torch and open_clip once and forks each worker from itself; without this every
            # worker imported them on its own, one after the other (the parent's write of the tokenizer waits
            # for the child to read it): ~20 s for 2 workers here, minutes for 8 on a GPU host.
            ctx.set_forkserver_preload(["searle_lib._oti_fast"])
            pool = ctx.Pool(self.workers, _init_worker, (self.tokenizer,))
        except BaseException as e:  # raised in the caller's thread by ``_ready_pool``
            self._start_error = e
            return
        with self._lock:
            if self._closed:  # closed while starting (a run too short to need the workers): nothing waits
                pool.terminate()
            else:
                self._pool = pool

    def _ready_pool(self, wait: bool = True):
        """The worker pool, or ``None`` while it is still starting and ``wait`` is false."""
        if self._starter is not None:
            if not wait and self._starter.is_alive():
                return None
            self._starter.join()
            self._starter = None
        if self._start_error is not None:
            raise RuntimeError(f"the {self.workers} tokenizer worker processes did not start; run with "
                               "tokenizer_workers=0 to tokenize in this process") from self._start_error
        return self._pool

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        size = max(256, len(texts) // (4 * self.workers))
        return [texts[i:i + size] for i in range(0, len(texts), size)]

    def _map(self, texts: list[str]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        if self.workers > 1 and len(texts) >= self.parallel_from:
            while len(out) < len(texts) and self._ready_pool(wait=False) is None:  # starting: tokenize here
                out += _rows(self.tokenizer, texts[len(out):len(out) + 1024])
            rest = texts[len(out):]
            if len(rest) >= self.parallel_from:
                return out + [r for part in self._ready_pool().map(_tokenize_trimmed, self._chunks(rest)) for r in part]
        return out + [r for i in range(len(out), len(texts), 4096) for r in _rows(self.tokenizer, texts[i:i + 4096])]

    def prefetch(self, texts: Sequence[str]) -> None:
        """Start tokenizing ``texts`` in the worker processes and return at once (no-op without workers): the
        next batch's phrases are tokenized while the current batch runs on the GPU."""
        if self.workers <= 1:
            return
        missing = [t for t in dict.fromkeys(texts) if t not in self.rows and t not in self._inflight]
        if len(missing) < self.parallel_from:
            return
        if self._ready_pool(wait=False) is None:
            self._deferred.append(missing)
            return
        self._pending.append((missing, self._pool.map_async(_tokenize_trimmed, self._chunks(missing))))
        self._inflight.update(missing)

    def _collect(self, needed: set[str]) -> None:
        """Take in the prefetches that are done or hold a text of ``needed``; the others stay in flight."""
        waiting = []
        for texts, result in self._pending:
            if result.ready() or not needed.isdisjoint(texts):
                self.rows.update(zip(texts, (r for part in result.get() for r in part)))
                self._inflight.difference_update(texts)
            else:
                waiting.append((texts, result))
        self._pending = waiting

    def ensure(self, texts: Sequence[str]) -> None:
        missing = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if missing and self._pending:  # wait only for the prefetches these texts are in, not the next batch's
            self._collect(set(missing))
            missing = [t for t in missing if t not in self.rows]
        if missing:
            self.rows.update(zip(missing, self._map(missing)))
        if self._deferred and self._ready_pool(wait=False) is not None:  # the workers are up: send the queue
            deferred, self._deferred = self._deferred, []
            for d in deferred:
                self.prefetch(d)

    def stack(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, longest]`` int64 token ids of ``texts``, zero-padded (open_clip's padding)."""
        self.ensure(texts)
        rows = [self.rows[t] for t in texts]
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        out = np.zeros((len(rows), max(int(lengths.max(initial=0)), 1)), dtype=np.int64)
        if rows:  # row-major boolean fill: each row's ids at its first positions
            out[np.arange(out.shape[1]) < lengths[:, None]] = np.concatenate(rows)
        return torch.from_numpy(out)

    def close(self) -> None:
        """End the worker processes (without waiting for ones still starting); later calls tokenize here."""
        with self._lock:
            self._closed = True
            pool, self._pool, self._starter, self.workers = self._pool, None, None, 0
        if pool is not None:
            pool.terminate()
        self._deferred.clear()
        self._pending.clear()
        self._inflight.clear()

    def __del__(self) -> None:
        if hasattr(self, "_lock"):  # not when __init__ failed
            self.close()


def unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(rows, dim=0, return_inverse=True)`` (rows sorted lexicographically), via one ``np.lexsort``:
    4-5x faster on a batch's ~250,000 phrase prefixes. Returns CPU tensors."""
    a = rows.cpu().numpy()
    if not len(a):
        return rows.cpu().clone(), torch.zeros(0, dtype=torch.long)
    order = np.lexsort(a.T[::-1])  # the first column is the primary key
    ordered = a[order]
    new = np.r_[True, (ordered[1:] != ordered[:-1]).any(1)]
    inverse = np.empty(len(a), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return torch.from_numpy(ordered[new]), torch.from_numpy(inverse)


class TokenTable:
    """Prompts on the device, with per-row length, placeholder and pooling positions known on the host.

    With ``split_prefix`` (placeholder prompts of a causal tower), each row is also split at its placeholder into a
    prefix, which never sees the pseudo-token and so is the same at every step, and the suffix from the
    placeholder to end-of-text: ``FastTextTower`` computes the prefixes' keys and values once and each step only
    the suffixes. Rows share a prefix when their tokens before the placeholder agree (the 24 templates have ~10
    distinct ones, GPT phrases "a photo of <concept> that ..." mostly one).
    """

    def __init__(self, backbone: Backbone, tokens: torch.Tensor, placeholder: bool = True,
                 split_prefix: bool = False, max_prefix_elements: int = 1 << 27):
        t = backbone.text
        tokens = tokens.long()
        n, width = tokens.shape
        lengths = ((tokens != 0).long().cumsum(1).argmax(1) + 1).clamp(min=1)
        ph = None
        if placeholder:
            is_ph = tokens == backbone.placeholder_id
            if not bool(is_ph.any(1).all()):
                bad = int((~is_ph.any(1)).nonzero()[0])
                raise ValueError(f"prompt {bad} has no placeholder token (id {backbone.placeholder_id}); write "
                                 "' $ ' where the pseudo-word goes")
            ph = is_ph.int().argmax(1)
        pool = _pool_type(t)
        if pool == "eos":
            eot = (tokens == getattr(t, "eos_id", getattr(t, "text_eos_id", None))).int().argmax(1)
        elif pool == "argmax":  # OpenAI CLIP: end-of-text has the largest id
            eot = tokens.argmax(1)
        else:  # "last" / "first" pooling: no truncation, the module path pools itself
            eot = torch.full((n,), backbone.context_length - 1 if pool == "last" else 0)
        self.truncatable = supports_truncation(backbone)
        self.host_lengths = lengths if self.truncatable else torch.full_like(lengths, backbone.context_length)
        if not self.truncatable:  # pad to the full context: the module path sees exactly the official input
            tokens = F.pad(tokens, (0, backbone.context_length - width))
        dev = backbone.device
        self.tokens = tokens.to(dev)
        self.ph = None if ph is None else ph.to(dev)
        self.split = bool(split_prefix and ph is not None and self.truncatable and n)
        self.kv: dict = {}  # prefix keys/values per autocast dtype, filled by FastTextTower
        if self.split:
            p_max = int(ph.max())
            cols = torch.arange(p_max)
            prefixes = torch.where(cols < ph[:, None], tokens[:, :p_max], 0)
            uniq, pid = unique_rows(prefixes)
            layers = len(t.transformer.resblocks)
            if uniq.numel() * layers * 2 * t.transformer.width > max_prefix_elements:
                self.split = False  # too many distinct prefixes to keep their keys and values
        if self.split:
            self.prefixes = uniq.to(dev)  # [P, p_max], zero-padded after each prefix
            self.pid = pid.to(dev)
            self.plen = ph.to(dev)  # prefix length = placeholder position
            self.host_lengths = eot - ph + 1  # suffix lengths: placeholder .. end-of-text
            s_max = int(self.host_lengths.max())
            idx = (ph[:, None] + torch.arange(s_max)).clamp(max=width - 1)
            suffix = torch.where(torch.arange(s_max) < self.host_lengths[:, None], tokens.gather(1, idx), 0)
            self.suffix = suffix.to(dev)  # [N, s_max]: the placeholder at column 0
        self.host_eot = eot - ph if self.split else eot  # pooled position among the computed ones
        self.eot = self.host_eot.to(dev)

    def __len__(self) -> int:
        return self.tokens.shape[0]


def _standard_block(blk: nn.Module) -> bool:
    attn = getattr(blk, "attn", None)
    return (type(blk).__name__ == "ResidualAttentionBlock" and isinstance(attn, nn.MultiheadAttention)
            and attn._qkv_same_embed_dim and attn.bias_k is None and not attn.add_zero_attn
            and not hasattr(blk, "ln_1_kv") and all(hasattr(blk, n) for n in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    B, L, D = x.shape
    return x.view(B, L, heads, D // heads).transpose(1, 2)


class Packing:
    """Where the real positions of ``B`` rows of different lengths sit in the padded ``[B, S]`` grid.

    The tower keeps activations packed, ``[T, D]`` with ``T`` the rows' total length, so the matrix products,
    layer norms and MLPs compute no padding; only attention (a small share of the work) runs padded to ``S``.
    Rows never interact and attention is causal, so the padding after a row's end never reaches its positions.
    ``pos``: ``[T]`` flat indices into ``[B * S]`` (``None``: no padding, ``T = B * S``); ``eot``: ``[B]`` each
    row's pooled position in the grid; ``pooled``: ``[B]`` the same among the ``T`` packed positions.
    """

    def __init__(self, B: int, S: int, eot: torch.Tensor, pos: torch.Tensor | None = None,
                 pooled: torch.Tensor | None = None):
        self.B, self.S, self.eot, self.pos = B, S, eot, pos
        self.pooled = torch.arange(B, device=eot.device) * S + eot if pooled is None else pooled

    @classmethod
    def of_lengths(cls, lengths: torch.Tensor, eot: torch.Tensor, device: torch.device) -> "Packing":
        """Packing of rows with host ``lengths`` and host ``eot`` positions (each below its length)."""
        B, S = len(lengths), int(lengths.max())
        if bool((lengths == S).all()):
            return cls(B, S, eot.to(device))
        pos = (torch.arange(S) < lengths[:, None]).flatten().nonzero().squeeze(1)
        start = lengths.cumsum(0) - lengths
        return cls(B, S, eot.to(device), pos.to(device), (start + eot).to(device))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, C]`` -> ``[B, S, C]`` (zeros at padding)."""
        if self.pos is not None:
            x = x.new_zeros(self.B * self.S, x.shape[-1]).index_copy(0, self.pos, x)
        return x.view(self.B, self.S, -1)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, C]`` -> ``[T, C]``."""
        x = x.reshape(self.B * self.S, -1)
        return x if self.pos is None else x.index_select(0, self.pos)


def _block(blk: nn.Module, x: torch.Tensor, pack: Packing, prefix: tuple | None = None,
           last: bool = False) -> torch.Tensor:
    """One ``ResidualAttentionBlock`` as open_clip computes it, on packed positions ``x`` ``[T, D]``.

    ``prefix``: ``(keys, values, keep)`` of a split table: each row's cached prefix keys/values ``[B, H, P, hd]``
    and which keys each position sees, ``keep`` ``[B, 1, S, P + S]``; without it attention is causal.
    ``last``: compute only each row's pooled position (the last block: nothing else is pooled); returns ``[B, D]``.
    """
    attn = blk.attn
    D, H, B = x.shape[-1], attn.num_heads, pack.B
    w, b = attn.in_proj_weight, attn.in_proj_bias
    h = blk.ln_1(x)
    if last:
        k, v = pack.pad(F.linear(h, w[D:], None if b is None else b[D:])).chunk(2, dim=-1)
        q = F.linear(h[pack.pooled], w[:D], None if b is None else b[:D]).view(B, 1, H, D // H).transpose(1, 2)
    else:
        q, k, v = pack.pad(F.linear(h, w, b)).chunk(3, dim=-1)
        q = _split_heads(q, H)
    k, v = _split_heads(k, H), _split_heads(v, H)
    if prefix is not None:
        k_pre, v_pre, keep = prefix
        k, v = torch.cat([k_pre, k], dim=2), torch.cat([v_pre, v], dim=2)
        mask = keep[torch.arange(B, device=x.device), :, pack.eot].unsqueeze(2) if last else keep
    else:
        mask = (torch.arange(pack.S, device=x.device) <= pack.eot[:, None]).view(B, 1, 1, pack.S) if last else None
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
    if last:
        xe = x[pack.pooled] + blk.ls_1(F.linear(o.reshape(B, D), attn.out_proj.weight, attn.out_proj.bias))
        return xe + blk.ls_2(blk.mlp(blk.ln_2(xe)))
    o = pack.unpad(o.transpose(1, 2).reshape(B, pack.S, D))
    x = x + blk.ls_1(F.linear(o, attn.out_proj.weight, attn.out_proj.bias))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


class FastTextTower:
    """Pooled text features of ``TokenTable`` rows, the pseudo-token injected at the placeholder (see module doc)."""

    def __init__(self, backbone: Backbone, compile: bool | str = False):
        t = backbone.text
        if getattr(t, "cls_emb", None) is not None or not hasattr(t, "token_embedding"):
            raise NotImplementedError(f"{backbone.name}: pseudo-word injection needs an OpenAI-style text tower")
        self.backbone, self.t = backbone, t
        tr = t.transformer
        self.cast = tr.get_cast_dtype() if hasattr(tr, "get_cast_dtype") else torch.float32
        self.functional = supports_truncation(backbone) and all(_standard_block(b) for b in tr.resblocks)
        self._core = self._core_impl
        if compile:
            self._core = torch.compile(self._core_impl, dynamic=True, mode=None if compile is True else str(compile))

    def _core_impl(self, x: torch.Tensor, pack: Packing, prefix: tuple | None = None) -> torch.Tensor:
        """Blocks and head on embedded rows ``x`` ``[B, S, D]``, packed as ``pack`` says; ``prefix``: a split
        table's cached ``(kv, pid, keep)``."""
        t = self.t
        if not self.functional:  # other block types: the modules themselves, with the additive causal mask
            L = x.shape[1]
            mask = getattr(t, "attn_mask", None)
            x = t.transformer(x, attn_mask=None if mask is None else mask[:L, :L])
            return self._head(x[torch.arange(pack.B, device=x.device), pack.eot])
        x = pack.unpad(x)
        kv, pid, keep = prefix if prefix is not None else (None, None, None)
        blocks = t.transformer.resblocks
        for n, blk in enumerate(blocks):
            cached = None if kv is None else (kv[n][0][pid], kv[n][1][pid], keep)
            x = _block(blk, x, pack, cached, last=n == len(blocks) - 1)
        return self._head(x)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.t.ln_final(x)  # per position, so pooling first is exact
        proj = self.t.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    @torch.no_grad()
    def _prefix_kv(self, table: TokenTable) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of every distinct prefix at every block (computed once per autocast dtype)."""
        dev = table.prefixes.device
        key = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else None
        if key not in table.kv:
            t = self.t
            P, p_max = table.prefixes.shape
            x = t.token_embedding(table.prefixes).to(self.cast)
            x = (x + t.positional_embedding[:p_max].to(self.cast)).flatten(0, 1)
            pack = Packing(P, p_max, torch.zeros(P, dtype=torch.long, device=dev))
            out = []
            blocks = t.transformer.resblocks
            for n, blk in enumerate(blocks):
                attn, D = blk.attn, x.shape[-1]
                b = attn.in_proj_bias
                k, v = pack.pad(F.linear(blk.ln_1(x), attn.in_proj_weight[D:], None if b is None else b[D:])
                                ).chunk(2, -1)
                out.append((_split_heads(k, attn.num_heads), _split_heads(v, attn.num_heads)))
                if n < len(blocks) - 1:
                    x = _block(blk, x, pack)
            table.kv[key] = out
        return table.kv[key]

    def __call__(self, table: TokenTable, rows: torch.Tensor, length: int,
                 pseudo_tokens: torch.Tensor | None = None, pack: Packing | None = None) -> torch.Tensor:
        """Features of ``table`` rows ``rows`` (device index tensor); ``length``: positions to compute (the rows'
        longest prompt, or longest suffix for a split table: ``table.host_lengths[rows].max()``); ``pack``: where
        each row's positions end (``StepRows``), so that no padding is computed; default: all ``length``."""
        if table.split and not self.functional:
            raise ValueError("a prefix-split TokenTable needs a tower with open_clip's standard blocks")
        t = self.t
        dev = table.tokens.device
        if pack is None:
            pack = Packing(len(rows), length, table.eot[rows])
        cols = torch.arange(length, device=dev)
        if table.split:  # the suffix from the placeholder (its column 0) to end-of-text, after its cached prefix
            ph = table.ph[rows]
            x = t.token_embedding(table.suffix[rows, :length]).to(self.cast)
            at = torch.zeros_like(ph)
            positions = t.positional_embedding[(ph[:, None] + cols).clamp(max=t.positional_embedding.shape[0] - 1)]
        else:
            x = t.token_embedding(table.tokens[rows, :length]).to(self.cast)
            at = None if table.ph is None else table.ph[rows]
            positions = t.positional_embedding[:length]
        if pseudo_tokens is not None:
            x = torch.where((cols == at[:, None]).unsqueeze(-1), pseudo_tokens.to(x.dtype).unsqueeze(1), x)
        x = x + positions.to(self.cast)
        if not table.split:
            return self._core(x, pack)
        p_max = table.prefixes.shape[1]
        see_prefix = (torch.arange(p_max, device=dev) < table.plen[rows][:, None]).unsqueeze(1)  # [B, 1, P]
        causal = torch.ones(length, length, dtype=torch.bool, device=dev).tril()
        keep = torch.cat([see_prefix.expand(-1, length, -1), causal.expand(len(rows), -1, -1)], dim=2).unsqueeze(1)
        return self._core(x, pack, (self._prefix_kv(table), table.pid[rows], keep))

    @torch.no_grad()
    def encode_all(self, table: TokenTable, batch_size: int = 1024) -> torch.Tensor:
        """Features of every row of a placeholder-free table, in length-sorted batches (no pseudo-token)."""
        n = len(table)
        dev = table.tokens.device
        order = torch.argsort(table.host_lengths, descending=True)
        out = None
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            f = self(table, idx.to(dev), int(table.host_lengths[idx].max()))
            if out is None:
                out = torch.empty(n, f.shape[-1], dtype=f.dtype, device=dev)
            out[idx.to(dev)] = f
        return out if out is not None else torch.zeros(0, self.backbone.feature_dim, device=dev)


_TOWERS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def tower_for(backbone: Backbone, compile: bool | str = False) -> FastTextTower:
    """The ``FastTextTower`` of ``backbone`` (one per model and compile mode, so a compiled one compiles once)."""
    towers = _TOWERS.setdefault(backbone.model, {})
    if compile not in towers:
        towers[compile] = FastTextTower(backbone, compile=compile)
    return towers[compile]


class StepRows:
    """The table rows a batch uses at every step, with how to compute them: packed (``Packing``: each row only up
    to its own end, no padding in the matrix products) or, with ``pack=False``, all at the step's longest row.

    Everything is fixed on the host before the loop (``idx``: ``[B, steps]`` host indices into ``table``), so a
    step launches its work back to back without a device sync. Rows never interact, so packing removes only
    padding: the features equal the unpacked ones up to rounding.
    """

    def __init__(self, table: TokenTable, idx: torch.Tensor, pack: bool = True):
        dev = table.tokens.device
        self.table, self.rows = table, idx.T.contiguous().to(dev)  # [steps, B]
        self.packs = [Packing.of_lengths(table.host_lengths[col], table.host_eot[col], dev) if pack else
                      Packing(len(col), int(table.host_lengths[col].max()), table.eot[col.to(dev)]) for col in idx.T]

    def features(self, tower: "FastTextTower", step: int, pseudo_tokens: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` features of step ``step``'s rows, the pseudo-tokens injected."""
        pack = self.packs[step]
        return tower(self.table, self.rows[step], pack.S, pseudo_tokens, pack)


class FeatureCache:
    """Plain-phrase features for a whole run (they never depend on the pseudo-token), each computed once.

    A feature computed beside other phrases can differ in its last bits from the same feature computed beside
    others. So a phrase is always encoded with the same rows: its concept's whole phrase list (the *encode
    group*), on its own. A feature then depends only on its concept's list, not on which batches, chunks, epochs
    or processes came before, and a resumed or sharded run equals an uninterrupted one bit for bit while the
    cache spans the run. Entries are keyed by (phrase, concept): the same text under two concepts is encoded in
    each concept's group. Past ``max_rows`` rows the least recently used groups are dropped (encoded again if
    needed, with the same bits); the groups one call needs are always kept, so a phi epoch that draws from every
    concept holds every list (20,931 x 256 rows at most: 7.7 GiB of fp16 features for ViT-L/14).
    """

    def __init__(self, tower: FastTextTower, tokens: TokenCache, max_rows: int = 4_000_000):
        self.tower, self.tokens, self.max_rows = tower, tokens, max_rows
        self.groups: OrderedDict[str, tuple[torch.Tensor, dict[str, int]]] = OrderedDict()  # features, rows
        self.rows = 0

    def unencoded(self, lists: Mapping[str, Sequence[str]]) -> list[str]:
        """The phrases of the groups in ``lists`` not held yet: what ``get`` will tokenize (to prefetch them)."""
        return [t for c, texts in lists.items() if c not in self.groups for t in texts]

    def get(self, keys: Sequence[tuple[str, str]], lists: Mapping[str, Sequence[str]]) -> torch.Tensor:
        """``[N, d]`` features of the plain phrases of ``keys`` ((phrase, concept) pairs; on the tower's device),
        encoding the groups (``lists[concept]``, each concept's phrases) not held yet."""
        need = list(dict.fromkeys(c for _, c in keys))
        if not need:
            return torch.zeros(0, self.tower.backbone.feature_dim, device=self.tower.backbone.device)
        for c in need:
            if c in self.groups:
                self.groups.move_to_end(c)  # most recently used last
        new = {c: list(dict.fromkeys(lists[c])) for c in need if c not in self.groups}
        self._make_room(sum(map(len, new.values())), keep=len(need) - len(new))
        self.tokens.ensure([t for texts in new.values() for t in texts])  # one call: the worker processes share it
        for c, texts in new.items():
            f = self.tower.encode_all(TokenTable(self.tower.backbone, self.tokens.stack(texts), placeholder=False))
            self.groups[c] = (f, {t: i for i, t in enumerate(texts)})
            self.rows += len(texts)
        starts = dict(zip(need, np.cumsum([0] + [len(self.groups[c][0]) for c in need]).tolist()))
        rows = np.fromiter((starts[c] + self.groups[c][1][p] for p, c in keys), np.int64, len(keys))
        feats = torch.cat([self.groups[c][0] for c in need]) if len(need) > 1 else self.groups[need[0]][0]
        return feats[torch.from_numpy(rows).to(feats.device)]

    def _make_room(self, rows: int, keep: int) -> None:
        """Drop least recently used groups until ``rows`` more fit, sparing the last ``keep`` (this call's)."""
        while self.rows + rows > self.max_rows and len(self.groups) > keep:
            _, (f, _) = self.groups.popitem(last=False)
            self.rows -= len(f)
