"""GPT-powered regularisation phrases: generation, storage, loading and the official filtering (reference section 4).

Mirrors miccunifi/SEARLE ``src/gpt_phrases_generation.py`` (generation) and the "problematic concepts" filter of
``src/oti_inversion.py`` / ``src/train_phi.py``:

* **Generators** (``phrases.generator``): ``"hf"``, any Hugging Face causal LM (official: GPT-Neo 2.7B, fp16 on CUDA,
  pad = EOS, left padding, prompt ``"a photo of {concept} that"``, ``do_sample``, ``max_length`` 35 tokens with the
  prompt, temperature 0.5, ``no_repeat_ngram_size`` 2, top-k 50, top-p 1.0, 256 phrases per concept); ``"offline"``,
  a small grammar writing phrases of the same form without an LM; ``"none"``, no regularisation (callers skip L_gpt).
* **Post-processing** as the official code under transformers 4.24: decode skipping special tokens *with* the
  4.24 default ``clean_up_tokenization_spaces=True`` (transformers 5 ignores that flag for BPE tokenizers, so we
  apply the 4.24 rules ourselves), keep the prompt, newline runs -> ". ", dot runs -> ".".
* **Storage**: JSONL, a header line recording the generator, then ``{"concept", "phrases"}`` per concept, flushed
  per batch. A restarted run checks the header, keeps complete lines, drops a truncated last line and continues.
  The official ``concept_to_phrases.pkl`` is read through :mod:`searle_lib.safe_pickle` and can be exported.

Determinism. Every concept draws its tokens from its own ``torch.Generator`` seeded by ``sha256(seed, concept)``
(a logits processor does the sampling; HF's own draw then sees a one-hot distribution). Concepts are batched only
with concepts whose prompt has the same token length, so no padding ever enters the model and ``max_length`` means
exactly what it means for one concept alone. Hence a concept's phrases do not depend on the batch size, on the
other concepts or on where a run resumed, up to floating-point differences between batch shapes (checked exactly
equal on CPU in ``tests/test_phrases.py``; a one-ulp change of a logit can in principle flip a draw). They do
depend on the device, dtype and library versions, which the header records. The offline grammar is exact.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import random
import re
import string
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tqdm.auto import tqdm

from .config import ConfigError, PhrasesConfig
from .safe_pickle import atomic_pickle_dump, safe_load_pickle

__all__ = [
    "PhrasesError", "PhraseBank", "Grammar", "DEFAULT_GRAMMAR", "PHRASE_GENERATORS", "register_generator",
    "generate_phrases", "prepare_phrases", "load_phrases", "export_official_pkl", "official_filter",
    "pseudo_phrase", "process_phrase", "clean_up_tokenization", "offline_phrases", "concept_seed", "load_lm",
]

FORMAT = "searle-phrases"
FORMAT_VERSION = 1


class PhrasesError(ValueError):
    """Phrases that cannot be generated, resumed or loaded; the message names the file or value and the fix."""


# ----------------------------------------------------------------------------------------------- text rules
def process_phrase(text: str) -> str:
    """Official post-processing: every run of newlines -> ". ", every run of dots -> "."."""
    text = re.sub(r"(\n)+", ". ", text)
    return re.sub(r"\.+", ".", text)


def clean_up_tokenization(text: str) -> str:
    """What ``decode`` did by default in transformers 4.24 (the official environment): drop spaces before
    punctuation and English contractions."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def concept_seed(seed: int, concept: str) -> int:
    """A 63-bit seed for one concept, independent of batching and run order."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{concept}".encode()).digest()[:8], "little") >> 1


def pseudo_phrase(phrase: str, concept: str, mode: str = "first") -> str:
    """Put ``" $ "`` in place of ``concept``: the first occurrence (``"first"``, OTI) or all (``"all"``, phi).

    As in the official code nothing is checked: a phrase without the concept comes back unchanged.
    """
    if mode == "first":
        return phrase.replace(concept, " $ ", 1)
    if mode == "all":
        return phrase.replace(concept, " $ ")
    raise ValueError(f"pseudo_phrase: mode must be 'first' (OTI) or 'all' (phi), got {mode!r}")


def official_filter(concept_to_phrases: dict[str, list[str]]) -> set[str]:
    """Concepts the official code drops: any phrase without the exact, case-sensitive concept string.

    Faithful check: replace the first occurrence with ``" $ "`` and look for ``"$"``, so a phrase that already
    holds a ``$`` passes even without the concept. One deliberate deviation: a concept with *no* phrases is dropped
    here (the official check keeps it, and phi's ``random.choice`` would then fail on it).
    """
    return {c for c, ps in concept_to_phrases.items()
            if not ps or any("$" not in p.replace(c, " $ ", 1) for p in ps)}


# ------------------------------------------------------------------------------------------ the phrase bank
@dataclass
class PhraseBank:
    """Concept -> phrases, the generator metadata, and the official filtering."""

    phrases: dict[str, list[str]]
    meta: dict[str, Any] = field(default_factory=dict)  # JSONL header, or {"format": "official-pkl", ...}

    @property
    def generator(self) -> dict[str, Any]:
        """What wrote the phrases (the JSONL header's generator; ``{"kind": "official-pkl"}`` for a pickle)."""
        return self.meta.get("generator", {"kind": self.meta.get("format", "unknown")})

    @cached_property
    def _dropped(self) -> set[str]:
        return official_filter(self.phrases)

    @property
    def usable_concepts(self) -> list[str]:
        """Concepts kept by the official filter, in file order."""
        return [c for c in self.phrases if c not in self._dropped]

    @property
    def dropped_concepts(self) -> list[str]:
        """Concepts the official filter drops (never used for L_gpt), in file order."""
        return [c for c in self.phrases if c in self._dropped]

    def is_usable(self, concept: str) -> bool:
        return concept in self.phrases and concept not in self._dropped

    def missing(self, concepts: Iterable[str]) -> list[str]:
        """The given concepts that have no phrases here."""
        return [c for c in concepts if c not in self.phrases]

    def __len__(self) -> int:
        return len(self.phrases)

    def __contains__(self, concept: object) -> bool:
        return concept in self.phrases

    def __getitem__(self, concept: str) -> list[str]:
        return self.phrases[concept]


def load_phrases(path: str | os.PathLike) -> PhraseBank:
    """Read our JSONL or the official ``concept_to_phrases.pkl`` (safely) into a :class:`PhraseBank`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"phrases file not found: {path} (generate it with `searle phrases` or give "
                                "the official concept_to_phrases.pkl)")
    with open(path, "rb") as f:
        first = f.read(1)
    if first == b"\x80":  # pickle protocol >= 2
        d = safe_load_pickle(path, expect=dict)
        bad = next(((k, v) for k, v in d.items()
                    if not isinstance(k, str) or not isinstance(v, list) or not all(isinstance(p, str) for p in v)),
                   None)
        if bad is not None:
            raise PhrasesError(f"{path}: expected a dict str -> list[str] as concept_to_phrases.pkl; entry "
                               f"{bad[0]!r} holds {type(bad[1]).__name__}")
        return PhraseBank(d, {"format": "official-pkl", "source": str(path)})
    header, records, _, partial = _read_jsonl(path)
    if header is None:
        raise PhrasesError(f"{path}: empty phrases file (no header line); regenerate it")
    if partial:
        warnings.warn(f"{path}: last line is truncated (interrupted run?); it was ignored", stacklevel=2)
    return PhraseBank({r["concept"]: r["phrases"] for r in records}, header)


def export_official_pkl(bank: PhraseBank | dict[str, list[str]], path: str | os.PathLike) -> Path:
    """Write the official ``concept_to_phrases.pkl`` (dict str -> list[str], pickle protocol 4)."""
    d = bank.phrases if isinstance(bank, PhraseBank) else bank
    return atomic_pickle_dump({str(k): list(v) for k, v in d.items()}, path)


def _read_jsonl(path: Path) -> tuple[dict | None, list[dict], int, bool]:
    """Header, records, byte length of the complete lines, and whether a truncated last line was found."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1]
    if not lines:
        return None, [], 0, end < len(data)
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise PhrasesError(f"{path}: line 1 is not JSON ({e}); not a phrases file?") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise PhrasesError(f"{path}: line 1 is not a {FORMAT!r} header; not a phrases file written by searle_lib")
    records = []
    for i, line in enumerate(lines[1:], start=2):
        try:
            r = json.loads(line)
            ok = isinstance(r["concept"], str) and isinstance(r["phrases"], list)
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        if not ok:
            raise PhrasesError(f"{path}: line {i} is not a {{'concept', 'phrases'}} record (file damaged); "
                               "delete the file to regenerate")
        records.append(r)
    return header, records, end, end < len(data)


# ---------------------------------------------------------------------------------------- offline grammar
@dataclass(frozen=True)
class Grammar:
    """Continuations of the prompt: templates with ``{c}`` (the concept) and ``{slot}`` fields, and slot fillers."""

    name: str
    templates: tuple[str, ...]
    slots: dict[str, tuple[str, ...]]

    @cached_property
    def continuations(self) -> list[str]:
        """Every template x filler combination, with ``{c}`` left in place (deterministic order)."""
        out = []
        for t in self.templates:
            names = [f for _, f, _, _ in string.Formatter().parse(t) if f and f != "c"]
            for combo in itertools.product(*(self.slots[n] for n in names)):
                out.append(t.format(c="{c}", **dict(zip(names, combo))))
        return list(dict.fromkeys(out))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.templates, self.slots], sort_keys=True).encode()).hexdigest()[:16]


DEFAULT_GRAMMAR = Grammar(
    name="default",
    templates=(
        "{verb} the {c} {place}.", "{verb} the {c} {time}.", "was taken {time} {place}.",
        "{verb} the {c} next to {thing}.", "{verb} the {c} in {light}.", "is {adj} and shows the {c} {view}.",
        "shows a {adj} {c} {place}.", "was taken {view} {time}.",
    ),
    slots={
        "verb": ("shows", "features", "depicts", "captures", "highlights", "includes"),
        "place": ("in a park", "on a table", "in the city", "at the beach", "in a kitchen", "on the street",
                  "in a garden", "near a window", "in the snow", "on a white background"),
        "time": ("at night", "in the morning", "at sunset", "on a rainy day", "in winter", "during the summer",
                 "in the afternoon", "at dawn"),
        "thing": ("a chair", "a tree", "a car", "a person", "a wall", "a book", "a lamp", "a fence"),
        "light": ("bright sunlight", "soft light", "low light", "black and white", "warm colors", "natural light"),
        "adj": ("blurry", "sharp", "colorful", "dark", "old", "beautiful", "simple", "detailed"),
        "view": ("from above", "from the side", "up close", "from far away", "from a low angle"),
    },
)


def grammar_named(name: str) -> Grammar:
    """``phrases.grammar``: "default" (:data:`DEFAULT_GRAMMAR`) or "world" (the embedded world's language)."""
    if name == "default":
        return DEFAULT_GRAMMAR
    if name == "world":
        from .world.vocab import world_grammar
        return world_grammar()
    raise ConfigError(f"phrases.grammar={name!r} is not a grammar; expected 'default' or 'world'")


def offline_phrases(concept: str, n: int, *, prompt: str = "a photo of {} that", seed: int = 42,
                    grammar: Grammar = DEFAULT_GRAMMAR) -> list[str]:
    """``n`` phrases "<prompt> <continuation>" for ``concept``, distinct while the grammar allows, then repeated.

    Deterministic from ``(seed, concept)``; every phrase starts with the filled prompt, so it holds the concept.
    """
    conts = grammar.continuations
    rng = random.Random(concept_seed(seed, concept))
    picks = rng.sample(conts, min(n, len(conts))) + rng.choices(conts, k=max(0, n - len(conts)))
    head = prompt.format(concept)
    return [f"{head} {c.replace('{c}', concept)}" for c in picks]


# ------------------------------------------------------------------------------------------------ registry
PHRASE_GENERATORS: dict[str, Callable[..., Any]] = {}


def register_generator(name: str) -> Callable:
    def deco(cls):
        PHRASE_GENERATORS[name] = cls
        return cls
    return deco


@register_generator("offline")
class _OfflineGenerator:
    def __init__(self, cfg: PhrasesConfig, *, grammar: Grammar | None = None, **_: Any):
        self.cfg, self.grammar = cfg, grammar or grammar_named(cfg.grammar)

    def settings(self) -> dict[str, Any]:
        return {"kind": "offline", "grammar": self.grammar.name, "grammar_hash": self.grammar.digest(),
                "prompt": self.cfg.prompt, "num_phrases": self.cfg.num_phrases}

    def runtime(self) -> dict[str, Any]:
        return {"versions": {"python": platform.python_version()}}

    def plan(self, concepts: list[str]) -> list[list[str]]:
        b = max(1, self.cfg.batch_size)
        return [concepts[i:i + b] for i in range(0, len(concepts), b)]

    def generate(self, concepts: list[str], seed: int) -> list[list[str]]:
        return [offline_phrases(c, self.cfg.num_phrases, prompt=self.cfg.prompt, seed=seed, grammar=self.grammar)
                for c in concepts]


# ------------------------------------------------------------------------------------- Hugging Face causal LM
def _offline_mode() -> bool:
    from huggingface_hub import constants
    env = any(os.environ.get(k, "").upper() in {"1", "ON", "YES", "TRUE"}
              for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


def _absent_lm_message(name: str, why: str = "") -> str:
    from huggingface_hub import constants
    return (
        f"language model {name!r} is not available{': ' + why if why else ''}. Looked for a local folder "
        f"{Path(name).expanduser().resolve()} and for the hub id in the Hugging Face cache {constants.HF_HUB_CACHE}"
        f"{' (offline mode: HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)' if _offline_mode() else ''}. To provide "
        f"it: on a machine with network run `hf download {name}` (or unset HF_HUB_OFFLINE), copy the "
        "cache here (HF_HOME), or set phrases.lm_name to a local folder holding the model and tokenizer "
        "(save_pretrained layout; searle_lib.tiny_lm.train_tiny_lm builds a small one); or use "
        "phrases.generator: offline."
    )


def _resolve_lm(name: str) -> tuple[Path | None, str | None]:
    """The local folder of ``name`` (a folder, or a hub id already in the cache) and a revision fingerprint.

    Offline, an absent hub id fails here, before anything is loaded. Online and uncached: ``(None, None)``.
    """
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder, _folder_fingerprint(folder)
    from huggingface_hub import try_to_load_from_cache
    try:
        hit = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id either
        hit = None
    if isinstance(hit, str):
        snapshot = Path(hit).parent
        return snapshot, snapshot.name  # hub cache snapshots are named by commit hash
    if _offline_mode():
        raise PhrasesError(_absent_lm_message(name, "not a local folder and not in the cache"))
    return None, None


def _folder_fingerprint(folder: Path) -> str:
    """Hash of a model folder: small files in full, big ones (weights of a large LM) by name, size, head and tail."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        size = p.stat().st_size
        with open(p, "rb") as f:
            if size <= 64 << 20:
                h.update(f.read())
            else:
                h.update(str(size).encode() + f.read(1 << 20))
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return "sha256:" + h.hexdigest()[:16]


def load_lm(name: str, device: str = "cpu") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer as the official code does: fp16 on CUDA, pad = EOS, left padding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _ = _resolve_lm(name)
    src, offline = (str(folder) if folder else name), _offline_mode()
    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(src, local_files_only=offline, dtype=dtype)
    except OSError as e:
        raise PhrasesError(_absent_lm_message(name, str(e).splitlines()[0])) from e
    return model.to(device).eval(), _prepare_tokenizer(tokenizer, name)


def _prepare_tokenizer(tokenizer: Any, name: str) -> Any:
    if tokenizer.eos_token is None:
        raise PhrasesError(f"tokenizer of {name!r} has no EOS token; the official setting pad = EOS needs one")
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


class _PerConceptSampler:
    """Logits processor that samples each concept's rows from that concept's own generator.

    It applies the same warpers ``generate`` would (temperature, top-k, top-p) and returns a one-hot score row
    (0 at the drawn token, -inf elsewhere), so HF's own warpers and multinomial draw change nothing.
    """

    def __init__(self, seeds: list[int], n: int, cfg: PhrasesConfig):
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
        self.seeds, self.n, self.gens = seeds, n, None
        self.warpers = ([TemperatureLogitsWarper(cfg.temperature)] if cfg.temperature != 1.0 else []) \
            + ([TopKLogitsWarper(cfg.top_k)] if cfg.top_k else []) \
            + ([TopPLogitsWarper(cfg.top_p)] if cfg.top_p < 1.0 else [])

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch
        if self.gens is None:
            self.gens = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        for w in self.warpers:
            scores = w(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)
        out = torch.full_like(scores, float("-inf"))
        for i, g in enumerate(self.gens):
            rows = slice(i * self.n, (i + 1) * self.n)
            out[rows].scatter_(1, torch.multinomial(probs[rows], 1, generator=g), 0.0)
        return out


@register_generator("hf")
class _HFGenerator:
    def __init__(self, cfg: PhrasesConfig, *, device: str = "cpu", model: Any = None, tokenizer: Any = None,
                 **_: Any):
        if (model is None) != (tokenizer is None):
            raise PhrasesError("pass both model and tokenizer, or neither (then cfg.lm_name is loaded)")
        if device == "auto":  # the run config's default
            import torch
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.cfg, self.device, self.model = cfg, device, model
        self.tokenizer = _prepare_tokenizer(tokenizer, cfg.lm_name) if tokenizer is not None else None
        self.lm_name = cfg.lm_name
        if model is not None:  # record what was passed, not cfg.lm_name
            where = getattr(model.config, "name_or_path", "") or ""
            self.lm_name = where or cfg.lm_name
            self.revision = _folder_fingerprint(Path(where)) if where and Path(where).is_dir() \
                else getattr(model.config, "_commit_hash", None)
        else:
            _, self.revision = _resolve_lm(cfg.lm_name)  # fails at once if absent offline
            if self.revision is None:  # online and not cached: download now, so the header names the commit
                self._load()

    def _load(self) -> None:
        if self.model is None:
            self.model, self.tokenizer = load_lm(self.cfg.lm_name, self.device)
            self.revision = self.revision or getattr(self.model.config, "_commit_hash", None)
        self.model.eval()

    def settings(self) -> dict[str, Any]:
        c = self.cfg
        return {"kind": "hf", "lm_name": self.lm_name, "lm_revision": self.revision, "prompt": c.prompt,
                "num_phrases": c.num_phrases, "do_sample": True, "max_length": c.max_length,
                "temperature": c.temperature, "no_repeat_ngram_size": c.no_repeat_ngram_size, "top_k": c.top_k,
                "top_p": c.top_p, "clean_up_tokenization_spaces": True, "sampler": "per-concept sha256(seed,concept)"}

    def runtime(self) -> dict[str, Any]:
        import tokenizers
        import torch
        import transformers
        dtype = "float16" if str(self.device).startswith("cuda") else "float32"
        if self.model is not None:
            dtype = str(self.model.dtype).replace("torch.", "")
        return {"device": str(self.device).split(":")[0], "dtype": dtype, "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}}

    def plan(self, concepts: list[str]) -> list[list[str]]:
        """Batches of concepts whose prompts have the same token length, shortest first: no padding is needed."""
        self._load()
        lengths = [len(ids) for ids in self.tokenizer([self.cfg.prompt.format(c) for c in concepts])["input_ids"]]
        groups: dict[int, list[str]] = {}
        for c, n in zip(concepts, lengths):
            if n >= self.cfg.max_length:
                raise PhrasesError(f"the prompt for concept {c!r} is {n} tokens, not below phrases.max_length "
                                   f"= {self.cfg.max_length}; raise max_length or shorten the concept")
            groups.setdefault(n, []).append(c)
        b = max(1, self.cfg.batch_size)
        return [g[i:i + b] for n in sorted(groups) for g in [groups[n]] for i in range(0, len(g), b)]

    def generate(self, concepts: list[str], seed: int) -> list[list[str]]:
        import torch
        from transformers import LogitsProcessorList
        c, n, tok = self.cfg, self.cfg.num_phrases, self.tokenizer
        enc = tok([c.prompt.format(x) for x in concepts], return_tensors="pt", padding=True).to(self.model.device)
        sampler = _PerConceptSampler([concept_seed(seed, x) for x in concepts], n, c)
        with torch.no_grad():
            out = self.model.generate(
                **enc, do_sample=True, max_length=c.max_length, num_return_sequences=n, temperature=c.temperature,
                no_repeat_ngram_size=c.no_repeat_ngram_size, top_k=c.top_k, top_p=c.top_p,
                pad_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                logits_processor=LogitsProcessorList([sampler]))
        texts = tok.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        phrases = [process_phrase(clean_up_tokenization(t)) for t in texts]
        return [phrases[i * n:(i + 1) * n] for i in range(len(concepts))]


# ------------------------------------------------------------------------------------------ generate/resume
def _clean_concepts(concepts: Iterable[str]) -> list[str]:
    out = []
    for i, c in enumerate(concepts):
        s = str(c).strip()  # the official loop strips each DisplayName
        if not s:
            raise PhrasesError(f"concept #{i} ({c!r}) is blank; remove blank names from the concept vocabulary")
        out.append(s)
    return list(dict.fromkeys(out))


def _check_header(path: Path, old: dict, new: dict) -> None:
    for key in ("generator", "seed"):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diff = [f"{k}: file has {a.get(k)!r}, now {b.get(k)!r}" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
        else:
            diff = [f"{key}: file has {a!r}, now {b!r}"]
        raise PhrasesError(
            f"{path} was written with other phrase settings ({'; '.join(diff)}). To resume it, use the settings "
            f"its header records; to start over, delete {path} or choose another output path."
        )
    if old.get("runtime") != new.get("runtime"):
        warnings.warn(f"{path}: resuming with a different device/dtype/library versions than the file records "
                      f"({old.get('runtime')} -> {new.get('runtime')}); phrases stay valid samples but a restart "
                      "from scratch would not reproduce the file exactly", stacklevel=3)


def generate_phrases(concepts: Sequence[str], cfg: PhrasesConfig, out_path: str | os.PathLike, *,
                     device: str = "cpu", seed: int = 42, model: Any = None, tokenizer: Any = None,
                     progress: bool = True, grammar: Grammar | None = None) -> Path:
    """Write (or finish) the JSONL phrase file for ``concepts`` with the generator ``cfg.generator``.

    Args:
        concepts: concept names (stripped and de-duplicated, as the official loop does).
        cfg: the ``phrases`` config section (generator, LM, prompt and sampling settings).
        out_path: JSONL file; if it exists its header must match and the run resumes.
        device: torch device for the LM ("cuda" loads it in fp16, as the official code; "auto": CUDA if present).
        seed: run seed; each concept's stream is seeded from ``(seed, concept)``.
        model, tokenizer: an already loaded HF causal LM and tokenizer (else loaded from ``cfg.lm_name``).
        progress: show a tqdm bar.
        grammar: the offline generator's grammar (default :data:`DEFAULT_GRAMMAR`).
    Returns:
        ``out_path``.
    """
    if cfg.generator not in PHRASE_GENERATORS:
        extra = " ('none' means no regularisation: skip L_gpt and do not call generate_phrases)" \
            if cfg.generator == "none" else ""
        raise PhrasesError(f"unknown phrases.generator {cfg.generator!r}{extra}; valid generators: "
                           f"{', '.join(sorted(PHRASE_GENERATORS))}, none")
    if cfg.prompt.count("{}") != 1 or "$" in cfg.prompt:
        raise PhrasesError(f"phrases.prompt={cfg.prompt!r} needs exactly one '{{}}' where the concept goes and no "
                           "'$' (official: 'a photo of {} that'); without the concept in the phrases the official "
                           "filter would drop every concept and silently disable the regularisation")
    out_path = Path(out_path)
    concepts = _clean_concepts(concepts)
    gen = PHRASE_GENERATORS[cfg.generator](cfg, device=device, model=model, tokenizer=tokenizer, grammar=grammar)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "generator": gen.settings(), "seed": seed,
              "runtime": gen.runtime()}

    done: set[str] = set()
    if out_path.exists():
        old, records, good, partial = _read_jsonl(out_path)
        if old is not None:
            _check_header(out_path, old, header)
            done = {r["concept"] for r in records}
            for r in records:
                if len(r["phrases"]) != cfg.num_phrases:
                    raise PhrasesError(f"{out_path}: concept {r['concept']!r} has {len(r['phrases'])} phrases, "
                                       f"expected {cfg.num_phrases}; delete the file to regenerate")
        if partial or old is None:  # drop the truncated last line (or a half-written header) and redo it
            with open(out_path, "r+b") as f:
                f.truncate(good)
    if not out_path.exists() or out_path.stat().st_size == 0:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "wb") as f:
            f.write((json.dumps(header, ensure_ascii=False) + "\n").encode())

    todo = [c for c in concepts if c not in done]
    if not todo:
        return out_path
    # Plan on the full list so the file order is the same whether or not the run was interrupted.
    batches = [[c for c in b if c not in done] for b in gen.plan(concepts)]
    with open(out_path, "ab") as f, tqdm(total=len(todo), desc=f"phrases ({cfg.generator})",
                                         disable=not progress) as bar:
        for batch in filter(None, batches):
            lines = "".join(json.dumps({"concept": c, "phrases": ps}, ensure_ascii=False) + "\n"
                            for c, ps in zip(batch, gen.generate(batch, seed)))
            f.write(lines.encode())
            f.flush()
            os.fsync(f.fileno())  # a killed run loses at most the batch being written
            bar.update(len(batch))
    return out_path


def prepare_phrases(concepts: Sequence[str], cfg: PhrasesConfig, out_path: str | os.PathLike,
                    **kwargs: Any) -> PhraseBank | None:
    """The phrase bank a stage needs: ``None`` for ``generator: none``, ``cfg.path`` if given, else generated.

    Raises :class:`PhrasesError` if a given file lacks some of ``concepts`` (the official code would fail on them).
    """
    if cfg.generator == "none":
        return None
    if cfg.path:
        bank = load_phrases(cfg.path)
        missing = bank.missing(c.strip() for c in concepts)
        if missing:
            raise PhrasesError(f"{cfg.path} has no phrases for {len(missing)} concept(s), e.g. {missing[:5]}; "
                               "generate them (unset phrases.path) or use a file made for this vocabulary")
        return bank
    return load_phrases(generate_phrases(concepts, cfg, out_path, **kwargs))
