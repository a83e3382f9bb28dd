"""benchmarks/perf's peer part without the peer: the matched model's shapes, the requests both
servers are sent, the rebuilt tokenizer's table, and an honest report when the peer's
environment is missing (CI never installs Infinity)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks.perf import peer, peer_model, report

ENGINE_CONFIGS = Path(__file__).resolve().parents[2] / "engine" / "liteembed" / "model_configs"


def test_the_matched_clip_has_liteembed_tinys_shapes() -> None:
    tiny = json.loads((ENGINE_CONFIGS / "liteembed-tiny.json").read_text())
    matched = peer.matched_clip_config(tiny)
    vision, text = matched["clip"]["vision_config"], matched["clip"]["text_config"]
    assert matched["image_size"] == 32
    assert matched["clip"]["projection_dim"] == 32
    assert (vision["hidden_size"], vision["num_attention_heads"]) == (64, 2)  # 64 / head width 32
    assert (vision["num_hidden_layers"], vision["patch_size"], vision["image_size"]) == (2, 8, 32)
    assert vision["intermediate_size"] == 256 and vision["hidden_act"] == "gelu"
    assert (text["hidden_size"], text["num_attention_heads"], text["num_hidden_layers"]) == (
        32,
        2,
        2,
    )
    assert (text["vocab_size"], text["max_position_embeddings"]) == (49408, 77)


def test_open_clip_defaults_fill_what_a_config_leaves_out() -> None:
    config = {
        "embed_dim": 512,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": {"width": 512, "layers": 12},
    }
    matched = peer.matched_clip_config(config)
    vision, text = matched["clip"]["vision_config"], matched["clip"]["text_config"]
    assert vision["num_attention_heads"] == 12 and text["num_attention_heads"] == 8
    assert vision["intermediate_size"] == 3072 and text["intermediate_size"] == 2048
    assert vision["hidden_act"] == text["hidden_act"] == "quick_gelu"


def parse(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    start, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}
    return start, headers, body


@pytest.mark.parametrize(
    ("build", "path", "expected"),
    [
        (peer.peer_request, "/embeddings", {"model": "peer-clip", "modality": "image"}),
        (peer.our_embeddings_request, "/v1/embeddings", {}),
    ],
    ids=["peer", "ours"],
)
def test_both_servers_get_the_same_image_as_a_data_uri(
    build: Any, path: str, expected: dict[str, str]
) -> None:
    image = b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9"
    request = build("http://127.0.0.1:8123", image)
    start, headers, body = parse(request.raw)
    assert start == f"POST {path} HTTP/1.1"
    assert headers["host"] == "127.0.0.1:8123"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body) and body == request.body
    document = json.loads(body)
    assert {k: document[k] for k in expected} == expected
    (uri,) = document["input"]
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix) and base64.b64decode(uri[len(prefix) :]) == image


def test_the_rebuilt_tokenizer_has_clips_ids(tmp_path: Path) -> None:
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    peer_model.tokenizer_files(bpe, tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert len(vocab) == 49408
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (49406, 49407)
    # open_clip's own table, which the engine's tokenizer uses, gives every token the same id.
    table = open_clip.SimpleTokenizer().encoder
    assert all(vocab[token] == i for token, i in table.items() if not token.startswith("<"))
    merges = (tmp_path / "merges.txt").read_text().splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 49152 - 256 - 2


def test_without_the_peer_environment_nothing_is_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer, "PEER_ENV", tmp_path / "no-venv")
    # No server, no model: an unavailable peer must return before touching either.
    outcome = peer.part_peer(None, None, None, tmp_path)  # type: ignore[arg-type]
    assert outcome["available"] is False and "peer_setup.sh" in outcome["reason"]
    assert set(outcome) == {"available", "reason"}
    text = "\n".join(report.peer_markdown(outcome))
    assert "not measured" in text and re.search(r"x\d", text) is None  # no ratio printed
