"""A frozen open_clip model behind one small interface: images in, features out, plus a text path
whose placeholder slot holds a learnable token embedding."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from liteembed.errors import CheckpointError, ModelNotFoundError, NoImagesError
from liteembed.images import to_rgb
from liteembed.text_path import (
    TextTower,
    TokenizedPrompts,
    tokenize_prompts,
    tokenize_templates,
)

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
# Models whose weights ship inside the package; "" or "default" as `pretrained` selects them.
SHIPPED_CHECKPOINTS: dict[str, Path] = {
    name: CHECKPOINT_DIR / f"{name}.pt" for name in ("liteembed-mini", "liteembed-mini-v2")
}

_PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
_registered_configs: set[Path] = set()
_register_lock = threading.Lock()
_ENCODE_BATCH = 256


def register_model_configs(directory: Path = MODEL_CONFIG_DIR) -> list[str]:
    """Make the project's model configs known to open_clip (idempotent); returns their names.

    open_clip silently skips a JSON file without top-level embed_dim/vision_cfg/text_cfg, which
    later surfaces as a confusing "not found in built-ins"; such files are reported here instead.
    """
    names: list[str] = []
    with _register_lock:
        for path in sorted(directory.glob("*.json")):
            try:
                config = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("model config %s is unreadable: %s", path, exc)
                continue
            if not all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):
                log.warning("model config %s lacks top-level embed_dim/vision_cfg/text_cfg", path)
                continue
            if path not in _registered_configs:
                open_clip.add_model_config(path)
                _registered_configs.add(path)
            names.append(path.stem)
    return names


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32  # half precision on CPU is slow and lossy; never worth it here
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    return _PRECISIONS[precision]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None, dict[str, Any]]:
    """State dict, declared vocabulary and metadata of a checkpoint file."""
    try:
        # weights_only: a checkpoint is data, never code to execute.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} is not a dictionary")
    vocabulary: list[str] | None = None
    meta: dict[str, Any] = {}
    state = payload
    if "state_dict" in payload:
        state = payload["state_dict"]
        words = payload.get("vocabulary")
        if words is not None:
            if not isinstance(words, list | tuple) or not all(isinstance(w, str) for w in words):
                raise CheckpointError(f"checkpoint {path}: 'vocabulary' must be a list of words")
            vocabulary = [str(w) for w in words]
        meta = dict(payload.get("meta") or {})
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    # Checkpoints saved from DataParallel/DDP prefix every key with "module.".
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state, vocabulary, meta


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    if "logit_scale" in state and "logit_scale" in own:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {source} does not fit the model: {exc}") from exc


class ClipBackend:
    """A frozen open_clip model with the few operations the engine needs."""

    def __init__(
        self,
        model: nn.Module,
        preprocess: Any,
        tokenizer: Any,
        *,
        model_name: str,
        model_id: str,
        checkpoint_hash: str,
        device: torch.device,
        vocabulary_words: list[str] | None = None,
        checkpoint_meta: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_id = model_id
        self.checkpoint_hash = checkpoint_hash
        self.device = device
        self.vocabulary_words = vocabulary_words
        self.checkpoint_meta = checkpoint_meta or {}
        self.text = TextTower(model)
        # Fail at load, not at the first job, when the tokenizer cannot mark a placeholder slot.
        tokenize_templates(tokenizer, ["{}"], self.text.context_length)
        self.is_causal_text: bool = self.text.is_causal
        self.token_dim: int = self.text.token_dim
        self.context_length: int = self.text.context_length
        self.logit_scale: float = float(model.logit_scale.detach().float().exp().item())
        with torch.no_grad():
            probe = self.text.encode_ids(self.tokenize(["a"]))
        self.embed_dim: int = int(probe.shape[-1])
        self._template_cache: dict[tuple[str, ...], Any] = {}
        self._step_towers: dict[torch.dtype, TextTower] = {}
        self._step_lock = threading.Lock()
        self._image_towers: dict[torch.dtype, nn.Module] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.text.dtype

    @property
    def token_table(self) -> torch.Tensor:
        """The token-embedding table E (V, d_tok), float32 on the model's device."""
        return self.text.token_embedding.weight.detach().float()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def encode_word_tokens(self, text: str) -> list[int]:
        """BPE ids of `text` without start/end tokens."""
        return list(self.tokenizer.encode(text))

    @property
    def decode_side(self) -> int:
        """The short side uploads are decoded down to (at least): twice the model's input side,
        so the preprocessing resize still averages several source pixels per input pixel."""
        size = getattr(self.model.visual, "image_size", 224)
        side = max(size) if isinstance(size, tuple | list) else int(size)
        return 2 * side

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if not images:
            raise NoImagesError("no images given")
        return torch.stack([self.preprocess(to_rgb(image)) for image in images])

    @torch.no_grad()
    def encode_image_batch(
        self, pixels: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Normalised float32 image features; `dtype`: the image tower's precision (None: the
        model's own; another: a copy of the tower in it, made on first use)."""
        dtype = dtype or self.dtype
        encode = self.model.encode_image if dtype == self.dtype else self._image_tower(dtype)
        outputs = []
        for start in range(0, pixels.shape[0], _ENCODE_BATCH):
            chunk = pixels[start : start + _ENCODE_BATCH].to(self.device, dtype)
            outputs.append(encode(chunk).float())
        return F.normalize(torch.cat(outputs), dim=-1).cpu()

    def view_dtype(self, precision: str) -> torch.dtype:
        """The image tower's dtype for a class's training views at `precision`
        (OptimizationConfig's `view_precision`): "auto" is bfloat16 on a CPU that multiplies
        bfloat16 natively (there a ViT-B/32 view encodes about 4x faster than in float32),
        else the model's own."""
        if precision == "bfloat16":
            return torch.bfloat16
        if precision not in ("model", "auto"):
            raise ValueError(f"unknown view precision {precision!r}")
        if precision == "auto" and self.device.type == "cpu" and _cpu_has_bfloat16():
            return torch.bfloat16
        return self.dtype

    def _image_tower(self, dtype: torch.dtype) -> nn.Module:
        """The image tower in `dtype`, a copy made on first use."""
        with self._step_lock:
            tower = self._image_towers.get(dtype)
            if tower is None:
                tower = self._image_towers[dtype] = copy.deepcopy(self.model.visual).to(dtype)
            return tower

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.encode_image_batch(self.preprocess_images(images))

    @torch.no_grad()
    def encode_texts(
        self, texts: Sequence[str], *, progress: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """Text features; `progress(done, total)` is called after each batch."""
        if not texts:
            return torch.empty(0, self.embed_dim)
        outputs = []
        for start in range(0, len(texts), _ENCODE_BATCH):
            ids = self.tokenize(texts[start : start + _ENCODE_BATCH])
            outputs.append(self.text.encode_ids(ids, short_context=True))
            if progress is not None:
                progress(min(start + _ENCODE_BATCH, len(texts)), len(texts))
        return torch.cat(outputs).cpu()

    def step_dtype(self, precision: str, *, short_context: bool = True) -> torch.dtype:
        """The text tower's dtype for optimisation steps at `precision` (OptimizationConfig's
        `step_precision`): "auto" is bfloat16 on a CPU that multiplies bfloat16 natively, for
        the kept-prefix pass only (`liteembed.text_prefix`): the full pass through open_clip's
        attention module ran several times slower in bfloat16 than in float32 on such a CPU."""
        if precision == "bfloat16":
            return torch.bfloat16
        if precision not in ("model", "auto"):
            raise ValueError(f"unknown step precision {precision!r}")
        prefix_pass = short_context and self.text.prefix is not None
        if precision == "auto" and prefix_pass and self.device.type == "cpu":
            return torch.bfloat16 if _cpu_has_bfloat16() else self.dtype
        return self.dtype

    def _tower(self, dtype: torch.dtype) -> TextTower:
        """The text tower in `dtype`: the model's own, or a copy made on first use."""
        if dtype == self.dtype:
            return self.text
        with self._step_lock:
            tower = self._step_towers.get(dtype)
            if tower is None:
                tower = self._step_towers[dtype] = self.text.cast(dtype)
            return tower

    def encode_with_token(
        self,
        templates: Sequence[str],
        token_embedding: torch.Tensor,
        *,
        short_context: bool = True,
        precision: str = "model",
    ) -> torch.Tensor:
        """Features of `templates` with `token_embedding` in the placeholder slot (differentiable).

        (d_tok,) -> (T, embed_dim); (B, d_tok) -> (B, T, embed_dim). Float32 on the model's device,
        so the result can feed a loss without a copy. `precision`: the text tower's, as
        `step_dtype` reads it.
        """
        key = tuple(templates)
        tokenized = self._template_cache.get(key)
        if tokenized is None:
            tokenized = tokenize_templates(self.tokenizer, templates, self.context_length)
            self._template_cache[key] = tokenized
        single = token_embedding.ndim == 1
        vectors = token_embedding.reshape(-1, self.token_dim).to(self.device)
        tower = self._tower(self.step_dtype(precision, short_context=short_context))
        features = tower.encode_with_token(tokenized, vectors, short_context=short_context)
        return features[0] if single else features

    def encode_prompts(self, prompts: Sequence[Sequence[str | torch.Tensor]]) -> torch.Tensor:
        """Features (N, embed_dim) of prompts made of text pieces and learned token embeddings.

        `["a sketch of a ", zorb_token, " next to a ", plax_token]`: each tensor (token_dim,) takes
        one token slot, so a learned word works in any prompt, beside others. No grad; a prompt
        longer than the context raises ValueError.
        """
        if not prompts:
            return torch.empty(0, self.embed_dim)
        pieces = [[p if isinstance(p, str) else None for p in prompt] for prompt in prompts]
        vectors = [
            p.reshape(self.token_dim).float()
            for prompt in prompts
            for p in prompt
            if not isinstance(p, str)
        ]
        # All at once first, so a prompt that is too long is refused before any model work.
        tokenized = tokenize_prompts(self.tokenizer, pieces, self.context_length)
        stacked = torch.stack(vectors) if vectors else torch.empty(0, self.token_dim)
        outputs = []
        for start in range(0, len(prompts), _ENCODE_BATCH):
            end = min(start + _ENCODE_BATCH, len(prompts))
            in_chunk = (tokenized.rows >= start) & (tokenized.rows < end)
            chunk = TokenizedPrompts(
                ids=tokenized.ids[start:end],
                rows=tokenized.rows[in_chunk] - start,
                columns=tokenized.columns[in_chunk],
            )
            outputs.append(self.text.encode_with_slots(chunk, stacked[in_chunk]))
        return torch.cat(outputs).cpu()


def _cpu_has_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX) through oneDNN; with
    AVX-512 alone oneDNN converts to float32 as it goes, no faster than float32."""
    if not torch.backends.mkldnn.is_available():
        return False
    native = (
        getattr(torch.cpu, name, lambda: False)()
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return any(native) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class _RandomInitWarningFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


@contextlib.contextmanager
def _no_random_init_warning() -> Iterator[None]:
    """open_clip warns (on the root logger) that a model created without a pretrained tag is
    initialized randomly; untrue when a checkpoint's weights are loaded into it right after."""
    root = logging.getLogger()
    quiet = _RandomInitWarningFilter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def load_backend(
    model: str,
    pretrained: str,
    *,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
) -> ClipBackend:
    """Load `model` with weights from a pretrained tag, a checkpoint path or `random` (`seed`)."""
    register_model_configs()
    if model not in open_clip.list_models():
        hint = ""
        if model in SHIPPED_CHECKPOINTS:
            hint = f" (its config {MODEL_CONFIG_DIR / (model + '.json')} is not there yet)"
        raise ModelNotFoundError(f"unknown model {model!r}{hint}")
    target = resolve_device(device)
    dtype = resolve_precision(precision, target)
    pretrained = (pretrained or "").strip()

    vocabulary: list[str] | None = None
    meta: dict[str, Any] = {}
    tag: str | None = None
    state: dict[str, torch.Tensor] | None = None
    if pretrained == "random":
        checkpoint_hash = f"random-{seed}"
        model_id = f"{model}@{checkpoint_hash}"
    else:
        path: Path | None = None
        if pretrained in ("", "default"):
            if model not in SHIPPED_CHECKPOINTS:
                raise CheckpointError(
                    f"no weights given for {model!r}: pass an open_clip pretrained tag, "
                    "a checkpoint path, or 'random'"
                )
            path = SHIPPED_CHECKPOINTS[model]
            if not path.is_file():
                raise CheckpointError(f"the shipped checkpoint of {model!r} is missing: {path}")
        elif Path(pretrained).expanduser().is_file():
            path = Path(pretrained).expanduser()
        elif pretrained in open_clip.list_pretrained_tags_by_model(model):
            tag = pretrained
        elif "/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise CheckpointError(f"checkpoint file not found: {pretrained}")
        else:
            known = open_clip.list_pretrained_tags_by_model(model)
            raise CheckpointError(
                f"unknown pretrained tag {pretrained!r} for {model!r}; "
                f"known tags: {known or 'none'}"
            )
        if path is not None:
            checkpoint_hash = file_sha256(path)
            model_id = f"{model}@{checkpoint_hash[:12]}"
            state, vocabulary, meta = read_checkpoint(path)
        else:
            checkpoint_hash = str(tag)
            model_id = f"{model}@{tag}"

    # fork_rng: the fixed seed makes every process build identical random weights without
    # disturbing the caller's global RNG stream.
    quiet = _no_random_init_warning() if state is not None else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), quiet:
        torch.manual_seed(seed)
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=tag, device="cpu", precision="fp32"
            )
        except Exception as exc:  # noqa: BLE001 - downloads and configs fail in many ways
            if tag is not None:
                raise CheckpointError(
                    f"pretrained weights {model}/{tag} unavailable: {exc}"
                ) from exc
            raise ModelNotFoundError(f"model {model!r} cannot be created: {exc}") from exc
    if state is not None:
        _load_state(net, state, model_id)
    net = net.to(device=target, dtype=dtype)
    tokenizer = open_clip.get_tokenizer(model)
    return ClipBackend(
        net,
        preprocess,
        tokenizer,
        model_name=model,
        model_id=model_id,
        checkpoint_hash=checkpoint_hash,
        device=target,
        vocabulary_words=vocabulary,
        checkpoint_meta=meta,
    )
