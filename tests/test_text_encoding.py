"""Pseudo-word injection is exact, and truncation changes nothing (SEARLE section 3.1)."""
import pytest
import torch

from searle_lib.text_encoding import encode_texts, encode_tokens, inject, sequence_lengths, truncate


def _word_id(backbone, word):
    ids = [i for i in backbone.tokenize([word])[0].tolist() if i not in (0, 49406, 49407)]
    assert len(ids) == 1, f"{word!r} is not a single BPE token"
    return ids[0]


def test_placeholder_id_is_derived_from_tokenizer(micro_backbone):
    assert micro_backbone.placeholder_id == 259  # OpenAI CLIP BPE: "$</w>"


@pytest.mark.parametrize("prompt", ["a photo of $", "a photo of $ that is red and has no sleeves", "$"])
def test_injecting_a_word_embedding_equals_writing_the_word(micro_backbone, prompt):
    b = micro_backbone
    word = "dog"
    pseudo = b.text.token_embedding.weight[_word_id(b, word)].unsqueeze(0)
    with torch.no_grad():
        injected = encode_tokens(b, b.tokenize([prompt]), pseudo)
        written = b.model.encode_text(b.tokenize([prompt.replace("$", word, 1)]))
    torch.testing.assert_close(injected, written, rtol=1e-5, atol=1e-6)


def test_only_first_placeholder_is_replaced(micro_backbone):
    b = micro_backbone
    pseudo = b.text.token_embedding.weight[_word_id(b, "cat")].unsqueeze(0)
    with torch.no_grad():
        injected = encode_tokens(b, b.tokenize(["a $ and a $"]), pseudo)
        written = b.model.encode_text(b.tokenize(["a cat and a $"]))
    torch.testing.assert_close(injected, written, rtol=1e-5, atol=1e-6)


def test_truncation_is_exact(micro_backbone):
    b = micro_backbone
    texts = ["a", "a photo of a red circle that has a small blue square on its left side", "two words"]
    with torch.no_grad():
        full = b.model.encode_text(b.tokenize(texts))
        ours = encode_texts(b, texts, batch_size=2)
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    toks = b.tokenize(texts)
    assert truncate(toks).shape[1] == int(sequence_lengths(toks).max()) < toks.shape[1]


def test_gradient_reaches_pseudo_token_only(micro_backbone):
    b = micro_backbone
    v = torch.zeros(2, b.token_dim, requires_grad=True)
    feats = encode_tokens(b, b.tokenize(["a photo of $", "$ that is blue"]), v)
    feats.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert all(p.grad is None for p in b.model.parameters())


def test_prompt_without_placeholder_is_an_error(micro_backbone):
    b = micro_backbone
    with pytest.raises(ValueError, match="no placeholder"):
        encode_tokens(b, b.tokenize(["no pseudo word here"]), torch.zeros(1, b.token_dim))


def test_inject_broadcasts_single_token():
    emb = torch.zeros(2, 4, 3)
    toks = torch.tensor([[1, 9, 9, 2], [1, 5, 9, 2]])
    out = inject(emb, toks, torch.ones(1, 3), placeholder_id=9)
    assert out[0, 1].sum() == 3 and out[0, 2].sum() == 0 and out[1, 2].sum() == 3
