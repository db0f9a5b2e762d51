"""Phrase generation (HF LM and offline grammar), resume, safe loading and the official filtering (section 4)."""
import json
import pickle
import time
from dataclasses import replace

import pytest

from searle_lib.config import ConfigError
import torch
from _lm_fixtures import tiny_lm, tiny_lm_dir, toy_captions  # noqa: F401

from searle_lib.config import PhrasesConfig
from searle_lib.phrases import (
    DEFAULT_GRAMMAR, PhraseBank, PhrasesError, clean_up_tokenization, export_official_pkl, generate_phrases,
    load_phrases, offline_phrases, official_filter, prepare_phrases, process_phrase, pseudo_phrase,
)
from searle_lib.safe_pickle import UnsafePickleError

CONCEPTS = ["red circle", "blue square", "Dog", " green star "]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny LM gains nothing from intra-op threads; on shared cores 2 threads were 12x slower than 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _hf_cfg(lm_dir, **kw):
    return replace(PhrasesConfig(generator="hf", lm_name=str(lm_dir), num_phrases=6, max_length=20, batch_size=2),
                   **kw)


def _spy(monkeypatch, model):
    """Record the prompts of every generate() call on ``model``."""
    calls = []
    orig = model.generate

    def generate(**kw):
        calls.append(kw["input_ids"].shape[0])
        return orig(**kw)
    monkeypatch.setattr(model, "generate", generate)
    return calls


# ------------------------------------------------------------------------------------------- text rules
def test_official_post_processing_on_crafted_strings():
    assert process_phrase("a photo of dog that\n\n\nruns\nfast") == "a photo of dog that. runs. fast"
    assert process_phrase("a photo of dog that... is cute.. ok.") == "a photo of dog that. is cute. ok."
    assert process_phrase("a.\n\n..b") == "a. .b"  # newline run -> ". ", dot runs collapse; the space stays
    # transformers 4.24 decode default (clean_up_tokenization_spaces=True)
    assert clean_up_tokenization("dog that , is n't here . it 's ok !") == "dog that, isn't here. it's ok!"


def test_pseudo_phrase_first_for_oti_all_for_phi():
    p = "a photo of dog that chases another dog"
    assert pseudo_phrase(p, "dog") == "a photo of  $  that chases another dog"
    assert pseudo_phrase(p, "dog", mode="all") == "a photo of  $  that chases another  $ "
    assert pseudo_phrase("no concept here", "dog") == "no concept here"  # official: unchanged, no check
    with pytest.raises(ValueError, match="'first'.*'all'"):
        pseudo_phrase(p, "dog", mode="some")


def test_official_filtering_on_crafted_examples():
    d = {
        "dog": ["a photo of dog that runs", "a photo of dog that sleeps"],  # usable
        "Cat": ["a photo of Cat that sits", "a photo of cat that sits"],  # one phrase lacks the exact case
        "Sea lion": ["a photo of Sea lion that swims", "a photo of Sea that swims"],  # substring missing
        "hat": ["a photo of $ that is nice", "a photo of hat"],  # a '$' passes the official check
        "empty": [],  # our one deviation: dropped (official keeps it and phi would crash on it)
    }
    assert official_filter(d) == {"Cat", "Sea lion", "empty"}
    bank = PhraseBank(d)
    assert bank.usable_concepts == ["dog", "hat"]
    assert bank.dropped_concepts == ["Cat", "Sea lion", "empty"]
    assert bank.is_usable("dog") and not bank.is_usable("Cat") and not bank.is_usable("absent")


# ------------------------------------------------------------------------------------------ HF generation
def test_hf_generation_end_to_end_with_tiny_lm(tiny_lm_dir, tmp_path):
    cfg = _hf_cfg(tiny_lm_dir)
    path = generate_phrases(CONCEPTS, cfg, tmp_path / "p.jsonl", device="auto", progress=False)  # CPU in tests
    bank = load_phrases(path)
    g = bank.meta["generator"]
    assert g["kind"] == "hf" and g["lm_name"] == str(tiny_lm_dir) and g["lm_revision"].startswith("sha256:")
    assert (g["max_length"], g["temperature"], g["no_repeat_ngram_size"], g["top_k"], g["top_p"]) == \
        (20, 0.5, 2, 50, 1.0)
    assert bank.meta["seed"] == 42 and bank.meta["runtime"]["dtype"] == "float32"
    assert sorted(bank.phrases) == sorted(c.strip() for c in CONCEPTS)  # names stripped, as the official loop
    everything = []
    for c, ps in bank.phrases.items():
        assert len(ps) == 6
        for p in ps:
            assert p.startswith(f"a photo of {c} that")  # the prompt is part of the phrase
            assert "\n" not in p and ".." not in p
        everything += ps
    assert len(set(everything)) > 8  # sampled, not one constant continuation
    assert any(len(p) > len(f"a photo of {c} that") + 3 for c, ps in bank.phrases.items() for p in ps)
    assert bank.usable_concepts == list(bank.phrases)


def test_post_processing_is_applied_to_decoded_output(tiny_lm, tmp_path, monkeypatch):
    model, tok = tiny_lm
    crafted = ["a photo of Dog that\n\nruns , fast...\nyes"]
    monkeypatch.setattr(tok, "batch_decode", lambda out, **kw: crafted * out.shape[0])
    path = generate_phrases(["Dog"], _hf_cfg("unused", num_phrases=3), tmp_path / "p.jsonl",
                            model=model, tokenizer=tok, progress=False)
    assert load_phrases(path)["Dog"] == ["a photo of Dog that. runs, fast. yes"] * 3


def test_phrases_do_not_depend_on_batch_size(tiny_lm, tmp_path, monkeypatch):
    model, tok = tiny_lm
    calls = _spy(monkeypatch, model)
    files = [generate_phrases(CONCEPTS, _hf_cfg("x", batch_size=b), tmp_path / f"b{b}.jsonl", model=model,
                              tokenizer=tok, progress=False) for b in (1, 3)]
    assert calls[:4] == [1, 1, 1, 1] and max(calls[4:]) >= 2  # batching really grouped concepts
    a, b = (load_phrases(f).phrases for f in files)
    assert a == b
    assert a != load_phrases(generate_phrases(CONCEPTS, _hf_cfg("x"), tmp_path / "s.jsonl", seed=7, model=model,
                                              tokenizer=tok, progress=False)).phrases


def test_resume_after_truncated_file_equals_uninterrupted_run(tiny_lm, tmp_path, monkeypatch):
    model, tok = tiny_lm
    cfg = _hf_cfg("x", batch_size=1)
    full = generate_phrases(CONCEPTS, cfg, tmp_path / "full.jsonl", model=model, tokenizer=tok, progress=False)
    lines = full.read_bytes().split(b"\n")
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"\n".join(lines[:2]) + b"\n" + lines[2][: len(lines[2]) // 2])  # killed mid-line
    calls = _spy(monkeypatch, model)
    generate_phrases(CONCEPTS, cfg, part, model=model, tokenizer=tok, progress=False)
    assert part.read_bytes() == full.read_bytes()
    assert calls == [1, 1, 1]  # three one-concept calls: the truncated one and two never started; one kept
    calls.clear()
    generate_phrases(CONCEPTS, cfg, part, model=model, tokenizer=tok, progress=False)  # complete: no work
    assert calls == [] and part.read_bytes() == full.read_bytes()
    part.write_bytes(lines[0][:40])  # killed while writing the header
    generate_phrases(CONCEPTS, cfg, part, model=model, tokenizer=tok, progress=False)
    assert part.read_bytes() == full.read_bytes()


def test_header_mismatch_is_a_clear_error(tiny_lm, tmp_path):
    model, tok = tiny_lm
    path = generate_phrases(CONCEPTS[:1], _hf_cfg("x"), tmp_path / "p.jsonl", model=model, tokenizer=tok,
                            progress=False)
    with pytest.raises(PhrasesError, match=r"temperature: file has 0\.5, now 0\.7.*delete .*p\.jsonl"):
        generate_phrases(CONCEPTS, _hf_cfg("x", temperature=0.7), path, model=model, tokenizer=tok)
    with pytest.raises(PhrasesError, match="seed: file has 42, now 1"):
        generate_phrases(CONCEPTS, _hf_cfg("x"), path, seed=1, model=model, tokenizer=tok)
    with pytest.raises(PhrasesError, match="kind: file has 'hf', now 'offline'"):
        generate_phrases(CONCEPTS, _hf_cfg("x", generator="offline"), path)


def test_absent_lm_offline_fails_at_once_with_how_to(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(PhrasesError) as e:
        generate_phrases(["dog"], PhrasesConfig(lm_name="searle-study/no-such-lm"), tmp_path / "p.jsonl")
    msg = str(e.value)
    assert time.perf_counter() - t0 < 5
    for part in ("'searle-study/no-such-lm'", "Hugging Face cache", "hf download", "local folder"):
        assert part in msg
    assert not (tmp_path / "p.jsonl").exists()
    with pytest.raises(PhrasesError, match="no/such/folder"):
        generate_phrases(["dog"], PhrasesConfig(lm_name=str(tmp_path / "no/such/folder")), tmp_path / "q.jsonl")


# ---------------------------------------------------------------------------------------- offline grammar
def test_offline_grammar_is_varied_deterministic_and_holds_the_concept():
    assert len(DEFAULT_GRAMMAR.continuations) >= 300
    for concept in ("dog", "Sea lion", "C++ {x} (.*)"):  # braces and regex characters are just text
        a = offline_phrases(concept, 256, seed=3)
        assert a == offline_phrases(concept, 256, seed=3)
        assert a != offline_phrases(concept, 256, seed=4)
        assert len(set(a)) == 256
        assert all(p.startswith(f"a photo of {concept} that ") and p.endswith(".") for p in a)
        assert not official_filter({concept: a})
    assert offline_phrases("dog", 5, seed=3) == offline_phrases("dog", 256, seed=3)[:5]
    many = offline_phrases("dog", 1000)
    assert len(many) == 1000 and len(set(many)) == len(DEFAULT_GRAMMAR.continuations)
    assert any(p.count("dog") > 1 for p in many)  # some repeat the concept, so phi's "all" mode matters


def test_world_grammar_speaks_the_worlds_language(tmp_path):
    from searle_lib.phrases import grammar_named
    from searle_lib.world.vocab import vocabulary_words
    world = grammar_named("world")
    assert world.name == "world" and world.digest() != DEFAULT_GRAMMAR.digest()
    known = vocabulary_words() | {"a", "is", "in", "the", "has", "no", "on", "background", "shapes", "white", "dark",
                                  "paper", "circles", "squares", "triangles", "diamonds", "stars", "crosses"}
    for cont in world.continuations:
        assert set(cont.replace("{c}", "").rstrip(".").split()) <= known, cont
    cfg = PhrasesConfig(generator="offline", num_phrases=8, grammar="world")
    bank = load_phrases(generate_phrases(["red circle"], cfg, tmp_path / "w.jsonl", progress=False))
    assert bank.generator["grammar"] == "world"
    assert bank["red circle"] == offline_phrases("red circle", 8, seed=42, grammar=world)
    with pytest.raises(ConfigError, match="phrases.grammar='klingon'"):
        grammar_named("klingon")


def test_offline_generation_file_and_resume(tmp_path):
    cfg = PhrasesConfig(generator="offline", num_phrases=16, batch_size=2)
    full = generate_phrases(CONCEPTS, cfg, tmp_path / "full.jsonl", progress=False)
    bank = load_phrases(full)
    assert bank.meta["generator"] == {"kind": "offline", "grammar": "default",
                                      "grammar_hash": DEFAULT_GRAMMAR.digest(), "prompt": "a photo of {} that",
                                      "num_phrases": 16}
    assert list(bank.phrases) == ["red circle", "blue square", "Dog", "green star"]
    assert bank["Dog"] == offline_phrases("Dog", 16, seed=42)
    data = full.read_bytes()
    part = tmp_path / "part.jsonl"
    part.write_bytes(data[: len(data) - 30])
    with pytest.warns(UserWarning, match="truncated"):
        assert len(load_phrases(part)) == 3
    generate_phrases(CONCEPTS, cfg, part, progress=False)
    assert part.read_bytes() == data


def test_generator_none_unknown_and_given_path(tmp_path):
    assert prepare_phrases(["dog"], PhrasesConfig(generator="none"), tmp_path / "p.jsonl") is None
    with pytest.raises(PhrasesError, match="skip L_gpt"):
        generate_phrases(["dog"], PhrasesConfig(generator="none"), tmp_path / "p.jsonl")
    with pytest.raises(PhrasesError, match="'gpt5'.*hf, offline, none"):
        generate_phrases(["dog"], PhrasesConfig(generator="gpt5"), tmp_path / "p.jsonl")
    with pytest.raises(PhrasesError, match="blank"):
        generate_phrases(["dog", "  "], PhrasesConfig(generator="offline"), tmp_path / "p.jsonl")
    pkl = export_official_pkl({"dog": ["a photo of dog that runs"]}, tmp_path / "c.pkl")
    cfg = PhrasesConfig(generator="hf", path=str(pkl))  # a given file is used, no LM needed
    assert prepare_phrases(["dog"], cfg, tmp_path / "unused.jsonl")["dog"] == ["a photo of dog that runs"]
    with pytest.raises(PhrasesError, match=r"no phrases for 1 concept\(s\), e\.g\. \['cat'\]"):
        prepare_phrases(["dog", "cat"], cfg, tmp_path / "unused.jsonl")
    bank = prepare_phrases(["dog"], PhrasesConfig(generator="offline", num_phrases=4), tmp_path / "o.jsonl")
    assert len(bank["dog"]) == 4


# ------------------------------------------------------------------------------------------ files
def test_official_pkl_round_trip(tmp_path):
    bank = load_phrases(generate_phrases(CONCEPTS, PhrasesConfig(generator="offline", num_phrases=8),
                                         tmp_path / "p.jsonl", progress=False))
    pkl = export_official_pkl(bank, tmp_path / "GPTNeo27B" / "concept_to_phrases.pkl")
    assert pickle.loads(pkl.read_bytes()) == bank.phrases  # what the official code's pickle.load sees
    again = load_phrases(pkl)
    assert again.phrases == bank.phrases and again.generator == {"kind": "official-pkl"}
    assert bank.generator["kind"] == "offline"
    pkl.write_bytes(pickle.dumps({"dog": "not a list"}))
    with pytest.raises(PhrasesError, match="entry 'dog' holds str"):
        load_phrases(pkl)


def test_malicious_official_pkl_is_refused(tmp_path):
    from test_safe_pickle import _Evil
    marker = tmp_path / "pwned"
    pkl = tmp_path / "concept_to_phrases.pkl"
    pkl.write_bytes(pickle.dumps({"dog": _Evil(marker)}))
    with pytest.raises(UnsafePickleError, match="refusing to unpickle"):
        load_phrases(pkl)
    assert not marker.exists()


def test_damaged_jsonl_is_named(tmp_path):
    path = generate_phrases(["a", "b", "c"], PhrasesConfig(generator="offline", num_phrases=2), tmp_path / "p.jsonl",
                            progress=False)
    lines = path.read_text().split("\n")
    lines[2] = "{not json"
    path.write_text("\n".join(lines))
    with pytest.raises(PhrasesError, match=r"p\.jsonl: line 3 .*delete the file"):
        load_phrases(path)
    path.write_text(json.dumps({"hello": 1}) + "\n")
    with pytest.raises(PhrasesError, match="not a 'searle-phrases' header"):
        load_phrases(path)


# ------------------------------------------------------------------------------------------ tiny LM
def test_tiny_lm_learns(tiny_lm_dir):
    info = json.loads((tiny_lm_dir / "tiny_lm.json").read_text())
    assert info["loss_last10"] < 0.3 * info["loss_first10"]


def test_tiny_lm_cache_and_foreign_folder(tmp_path):
    from searle_lib.tiny_lm import train_tiny_lm
    texts = toy_captions(200)
    out = train_tiny_lm(texts, tmp_path / "lm", steps=5, progress=False)
    info = json.loads((out / "tiny_lm.json").read_text())
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert train_tiny_lm(texts, out, steps=5, progress=False) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not retrained
    train_tiny_lm(texts[:100], out, steps=5, progress=False)  # other texts: rebuilt
    assert json.loads((out / "tiny_lm.json").read_text())["hash"] != info["hash"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a tiny-LM cache"):
        train_tiny_lm(texts, tmp_path / "mine", steps=5, progress=False)
