"""Backend loading and the hand-built text path."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch

import liteembed.backend as backend_module
from liteembed import CheckpointError, ClipBackend, ModelNotFoundError, load_backend
from liteembed.text_path import TextTower, tokenize_templates

TEMPLATES = ["a photo of a {}.", "a blurry picture of the {} on a table", "{}"]


def _single_token_word(backend: ClipBackend, word: str) -> int:
    tokens = backend.encode_word_tokens(word)
    assert len(tokens) == 1, f"{word!r} should be one BPE token"
    return tokens[0]


def test_random_weights_are_reproducible_and_seeded(backend: ClipBackend) -> None:
    again = load_backend("liteembed-tiny", "random", device="cpu", seed=0)
    other = load_backend("liteembed-tiny", "random", device="cpu", seed=1)
    first, second, third = (b.model.state_dict() for b in (backend, again, other))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["token_embedding.weight"], third["token_embedding.weight"])
    assert backend.model_id == "liteembed-tiny@random-0"
    assert backend.checkpoint_hash == "random-0"
    assert (backend.embed_dim, backend.token_dim) == (32, 32)
    assert backend.is_causal_text
    assert backend.vocabulary_words is None


def test_loading_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_backend("liteembed-tiny", "random", device="cpu", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_short_context_equals_full_context(backend: ClipBackend) -> None:
    vectors = torch.randn(3, backend.token_dim, generator=torch.Generator().manual_seed(0)) * 0.05
    short = backend.encode_with_token(TEMPLATES, vectors, short_context=True)
    full = backend.encode_with_token(TEMPLATES, vectors, short_context=False)
    assert short.shape == (3, len(TEMPLATES), backend.embed_dim)
    assert (short - full).abs().max().item() < 1e-5
    # The features must actually depend on the vector, or the equality above says nothing.
    assert (short[0] - short[1]).abs().max().item() > 1e-3


def test_kept_template_prefix_gives_the_full_pass_and_its_gradient(backend: ClipBackend) -> None:
    templates = [*TEMPLATES, "a sketch of a {} next to a dog"]
    tokenized = tokenize_templates(backend.tokenizer, templates, backend.context_length)
    full_pass = TextTower(backend.model)
    full_pass.prefix = None  # every position recomputed, as without a kept prefix
    assert backend.text.prefix is not None
    results = []
    for tower in (backend.text, full_pass, backend.text):  # the second call reads kept states
        vectors = torch.randn(3, backend.token_dim, generator=torch.Generator().manual_seed(2))
        vectors = (vectors * 0.05).requires_grad_(True)
        features = tower.encode_with_token(tokenized, vectors)
        (features * torch.linspace(-1, 1, features.shape[-1])).sum().backward()
        results.append((features.detach(), vectors.grad))
    for features, grad in (results[0], results[2]):
        assert (features - results[1][0]).abs().max().item() < 1e-5
        assert (grad - results[1][1]).abs().max().item() < 1e-4 * results[1][1].abs().max().item()


def test_towers_with_other_blocks_run_the_full_pass(backend: ClipBackend) -> None:
    model = copy.deepcopy(backend.model)

    class Block(type(model.transformer.resblocks[0])):  # type: ignore[misc]
        def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
            return super().forward(*args, **kwargs)

    model.transformer.resblocks[0].__class__ = Block
    assert TextTower(model).prefix is None


def test_injecting_a_word_embedding_equals_the_ordinary_text_path(backend: ClipBackend) -> None:
    token = _single_token_word(backend, "dog")
    vector = backend.token_table[token]
    injected = backend.encode_with_token(TEMPLATES, vector)
    texts = [t.format("dog") for t in TEMPLATES]
    ours = backend.encode_texts(texts)
    with torch.no_grad():
        reference = backend.model.encode_text(backend.tokenize(texts), normalize=True)
    assert injected.shape == (len(TEMPLATES), backend.embed_dim)
    assert (injected - reference).abs().max().item() < 1e-5
    assert (ours - reference).abs().max().item() < 1e-5
    # A different word gives a different feature: the slot is really the placeholder's.
    other = backend.encode_with_token(
        TEMPLATES, backend.token_table[_single_token_word(backend, "cat")]
    )
    assert (other - injected).abs().max().item() > 1e-3


def test_injection_is_differentiable(backend: ClipBackend) -> None:
    vector = backend.token_table[_single_token_word(backend, "dog")].clone().requires_grad_(True)
    backend.encode_with_token(["a photo of a {}."], vector).sum().backward()
    assert vector.grad is not None and vector.grad.abs().sum().item() > 0


def test_non_causal_tower_falls_back_to_full_length(backend: ClipBackend) -> None:
    model = copy.deepcopy(backend.model)
    # Full attention in both directions: truncating would change the pooled feature.
    model.attn_mask = torch.zeros_like(model.attn_mask)
    tower = TextTower(model)
    assert not tower.is_causal
    ids = backend.tokenize(["a photo of a dog."])
    with torch.no_grad():
        reference = model.encode_text(ids, normalize=True)
        ours = tower.encode_ids(ids, short_context=True)
        cut = torch.nn.functional.normalize(
            tower.forward_embeddings(tower.token_embedding(ids[:, :8]), ids[:, :8]), dim=-1
        )
    assert (ours - reference).abs().max().item() < 1e-5
    assert (cut - reference).abs().max().item() > 1e-4  # truncation would have been wrong here


def test_template_needs_exactly_one_placeholder(backend: ClipBackend) -> None:
    vector = torch.zeros(backend.token_dim)
    with pytest.raises(ValueError, match="placeholder"):
        backend.encode_with_token(["no slot here"], vector)
    with pytest.raises(ValueError, match="placeholder"):
        backend.encode_with_token(["{} and {}"], vector)


def _save_checkpoint(backend: ClipBackend, path: Path, *, wrapped: bool) -> None:
    state = backend.model.state_dict()
    payload = {"state_dict": state, "vocabulary": ["red", "blue", "circle"], "meta": {"x": 1}}
    torch.save(payload if wrapped else state, path)


def test_checkpoint_path_loads_weights_vocabulary_and_hash(
    backend: ClipBackend, tmp_path: Path
) -> None:
    path = tmp_path / "tiny.pt"
    _save_checkpoint(backend, path, wrapped=True)
    loaded = load_backend("liteembed-tiny", str(path), device="cpu", seed=99)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.checkpoint_hash == digest
    assert loaded.model_id == f"liteembed-tiny@{digest[:12]}"
    assert loaded.vocabulary_words == ["red", "blue", "circle"]
    assert loaded.checkpoint_meta == {"x": 1}
    ours, theirs = backend.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # seed 99 was overridden

    plain = tmp_path / "plain.pt"
    _save_checkpoint(backend, plain, wrapped=False)
    assert load_backend("liteembed-tiny", str(plain), device="cpu").vocabulary_words is None


def test_shipped_default_checkpoint(
    backend: ClipBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shipped.pt"
    monkeypatch.setitem(backend_module.SHIPPED_CHECKPOINTS, "liteembed-tiny", path)
    with pytest.raises(CheckpointError, match="missing"):
        load_backend("liteembed-tiny", "default", device="cpu")
    _save_checkpoint(backend, path, wrapped=True)
    assert load_backend("liteembed-tiny", "", device="cpu").vocabulary_words is not None


def test_liteembed_mini_default_loads_or_fails_clearly() -> None:
    shipped = backend_module.SHIPPED_CHECKPOINTS["liteembed-mini"]
    config = backend_module.MODEL_CONFIG_DIR / "liteembed-mini.json"
    if shipped.is_file() and config.is_file():
        mini = load_backend("liteembed-mini", "default", device="cpu")
        assert mini.model_id.startswith("liteembed-mini@")
        assert mini.vocabulary_words
    else:
        with pytest.raises((CheckpointError, ModelNotFoundError), match="liteembed-mini"):
            load_backend("liteembed-mini", "default", device="cpu")


@pytest.mark.parametrize(
    ("model", "pretrained", "error", "message"),
    [
        ("no-such-model", "random", ModelNotFoundError, "unknown model"),
        ("liteembed-tiny", "", CheckpointError, "no weights given"),
        ("liteembed-tiny", "/nonexistent/weights.pt", CheckpointError, "not found"),
        ("liteembed-tiny", "laion400m_e32", CheckpointError, "unknown pretrained tag"),
    ],
)
def test_bad_model_or_weights(model: str, pretrained: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        load_backend(model, pretrained, device="cpu")


def test_corrupt_or_mismatched_checkpoint(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_backend("liteembed-tiny", str(garbage), device="cpu")
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, wrong)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_backend("liteembed-tiny", str(wrong), device="cpu")


def test_bad_device_and_precision() -> None:
    with pytest.raises(ValueError, match="precision"):
        load_backend("liteembed-tiny", "random", device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="device"):
        load_backend("liteembed-tiny", "random", device="tpu-of-dreams")


def test_half_precision_text_path_returns_float32() -> None:
    # What a GPU gets by default (bf16), exercised on the CPU so the dtype plumbing is covered.
    half = load_backend("liteembed-tiny", "random", device="cpu", precision="bf16")
    assert half.dtype == torch.bfloat16
    vector = half.token_table[half.encode_word_tokens("dog")[0]].clone().requires_grad_(True)
    features = half.encode_with_token(["a photo of a {}."], vector)
    assert features.dtype == torch.float32
    features.sum().backward()
    assert vector.grad is not None and vector.grad.dtype == torch.float32
    reference = half.encode_texts(["a photo of a dog."])
    assert (features.detach() - reference).abs().max().item() < 2e-2


def test_bfloat16_steps_run_on_a_copy_of_the_tower(backend: ClipBackend) -> None:
    vectors = torch.randn(3, backend.token_dim, generator=torch.Generator().manual_seed(4)) * 0.05
    exact = backend.encode_with_token(TEMPLATES, vectors)
    leaf = vectors.clone().requires_grad_(True)
    fast = backend.encode_with_token(TEMPLATES, leaf, precision="bfloat16")
    assert fast.dtype == torch.float32
    assert (fast.detach() - exact).abs().max().item() < 2e-2
    assert (fast.detach() - exact).abs().max().item() > 0  # it did run in bfloat16
    fast.sum().backward()
    assert leaf.grad is not None and leaf.grad.dtype == torch.float32
    # The model itself stays float32: its own features are unchanged after the copy was made.
    assert backend.dtype == torch.float32
    assert torch.equal(backend.encode_with_token(TEMPLATES, vectors), exact)
    assert backend.step_dtype("model") == torch.float32
    assert backend.step_dtype("auto") in (torch.float32, torch.bfloat16)
    # The full pass stays at the model's precision under "auto" (bfloat16 was slower there).
    assert backend.step_dtype("auto", short_context=False) == torch.float32
    with pytest.raises(ValueError, match="precision"):
        backend.step_dtype("fp8")


def test_bfloat16_views_run_on_a_copy_of_the_image_tower(
    backend: ClipBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    exact = backend.encode_image_batch(pixels)
    fast = backend.encode_image_batch(pixels, torch.bfloat16)
    assert fast.dtype == torch.float32 and torch.allclose(fast.norm(dim=-1), torch.ones(3))
    assert (fast - exact).abs().max().item() < 2e-2
    assert (fast - exact).abs().max().item() > 0  # it did run in bfloat16
    # The model's own image tower stays float32 and gives the same features after the copy.
    assert next(backend.model.visual.parameters()).dtype == torch.float32
    assert torch.equal(backend.encode_image_batch(pixels), exact)
    assert backend.view_dtype("model") == torch.float32
    assert backend.view_dtype("bfloat16") == torch.bfloat16
    # "auto": bfloat16 only where the CPU multiplies it natively.
    monkeypatch.setattr(backend_module, "_cpu_has_bfloat16", lambda: False)
    assert backend.view_dtype("auto") == torch.float32
    monkeypatch.setattr(backend_module, "_cpu_has_bfloat16", lambda: True)
    assert backend.view_dtype("auto") == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        backend.view_dtype("fp8")


def test_prompts_with_word_slots_equal_the_ordinary_text_path(backend: ClipBackend) -> None:
    dog, cat = (backend.token_table[_single_token_word(backend, w)] for w in ("dog", "cat"))
    features = backend.encode_prompts(
        [
            ["a sketch of a ", dog, " on a table"],
            ["a ", dog, " next to a ", cat],
            ["a photo of a cat"],
            [cat],
        ]
    )
    expected = backend.encode_texts(
        ["a sketch of a dog on a table", "a dog next to a cat", "a photo of a cat", "cat"]
    )
    assert features.shape == (4, backend.embed_dim)
    assert (features - expected).abs().max().item() < 1e-5
    # One slot, one template: the same as the single-word path the optimisation uses.
    single = backend.encode_with_token(["a sketch of a {} on a table"], dog)
    assert (features[0] - single[0]).abs().max().item() < 1e-5


def test_prompt_slots_take_the_given_vectors(backend: ClipBackend) -> None:
    generator = torch.Generator().manual_seed(1)
    first, second = (torch.randn(backend.token_dim, generator=generator) * 0.05 for _ in range(2))
    features = backend.encode_prompts(
        [["a ", first, " next to a ", second], ["a ", second, " next to a ", first]]
    )
    # The order of the vectors matters: each goes to its own slot.
    assert (features[0] - features[1]).abs().max().item() > 1e-3


def test_a_prompt_longer_than_the_context_is_refused(backend: ClipBackend) -> None:
    with pytest.raises(ValueError, match="context"):
        backend.encode_prompts([["word " * backend.context_length]])
    assert backend.encode_prompts([]).shape == (0, backend.embed_dim)
