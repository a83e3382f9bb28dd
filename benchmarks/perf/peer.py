"""Part 6, peer: another embedding server on a matched encoder, side by side with ours.

The peer is Infinity (`infinity-emb`), in its own environment (`.venv-peer/`, made by
`bash benchmarks/perf/peer_setup.sh`) so its pins never touch the project's. It serves a Hugging
Face-format CLIP with random weights whose shapes are the measured model's
(`matched_clip_config`; the directory is written by `peer_model.py` in the peer's environment),
on the same torch, the same torch threads and the CPU. One load generator (the lean client,
`benchmarks/perf/lean_http.py`) sends the same 256x256 JPEG to

- the peer's `POST /embeddings` (the image as a `data:image/jpeg;base64,` URI),
- our `POST /v1/embeddings` with the same OpenAI-shaped body (the same URI),
- our `POST /v1/classify` with the JPEG as the raw body (10 classes),

at concurrency 1 and 16, in interleaved rounds whose server order rotates each round, so
background load hits every server alike; the ratios are per round, then the median. Without the
peer's environment the part says so and measures nothing: no figure stands in for the peer's.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

import httpx

from benchmarks.perf import lean_http
from benchmarks.perf.harness import Server, summarize, test_image
from benchmarks.perf.load import bare_encode, classify_request
from benchmarks.perf.rows import replace_ready_classes, wait_for_size
from cli import serve_process

PEER_ENV = serve_process.REPO / ".venv-peer"
PEER_NAME = "peer-clip"
# CLIP's begin- and end-of-text ids (the rebuilt tokenizer's, as OpenAI CLIP's).
_BOS, _EOS = 49406, 49407


def matched_clip_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """`transformers.CLIPConfig` arguments for the shapes of an open_clip model config (the
    `embed_dim` / `vision_cfg` / `text_cfg` JSON), and the image side its processor works at.
    open_clip's defaults fill what the config leaves out (64-wide vision heads, 8 text heads,
    an MLP 4x the width, exact GELU unless `quick_gelu`)."""
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    v_width, t_width = int(vision["width"]), int(text["width"])
    return {
        "image_size": int(vision["image_size"]),
        "clip": {
            "projection_dim": int(model_cfg["embed_dim"]),
            "vision_config": {
                "hidden_size": v_width,
                "intermediate_size": int(v_width * vision.get("mlp_ratio", 4.0)),
                "num_hidden_layers": int(vision["layers"]),
                "num_attention_heads": v_width // int(vision.get("head_width", 64)),
                "image_size": int(vision["image_size"]),
                "patch_size": int(vision["patch_size"]),
                "hidden_act": act,
            },
            "text_config": {
                "hidden_size": t_width,
                "intermediate_size": int(t_width * text.get("mlp_ratio", 4.0)),
                "num_hidden_layers": int(text["layers"]),
                "num_attention_heads": int(text.get("heads", 8)),
                "max_position_embeddings": int(text.get("context_length", 77)),
                "vocab_size": int(text.get("vocab_size", 49408)),
                "hidden_act": act,
                "bos_token_id": _BOS,
                "eos_token_id": _EOS,
            },
        },
    }


def image_data_uri(image: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(image).decode("ascii")


def peer_request(url: str, image: bytes) -> lean_http.Request:
    """The peer's embeddings request for one image (its image modality, a data URI)."""
    body = {"model": PEER_NAME, "modality": "image", "input": [image_data_uri(image)]}
    return lean_http.Request.post(
        url, "/embeddings", json.dumps(body).encode(), "application/json", None
    )


def our_embeddings_request(url: str, image: bytes) -> lean_http.Request:
    """Our /v1/embeddings in OpenAI's shape, the image as the same data URI."""
    body = {"input": [image_data_uri(image)]}
    return lean_http.Request.post(
        url, "/v1/embeddings", json.dumps(body).encode(), "application/json", None
    )


def unavailable() -> str | None:
    """Why the peer cannot run here, or None."""
    if not (PEER_ENV / "bin" / "infinity_emb").exists():
        return f"no peer environment at {PEER_ENV} (bash benchmarks/perf/peer_setup.sh makes it)"
    return None


def build_peer_model(model: str, workdir: Path) -> Path:
    """The matched random-weight CLIP as a Hugging Face directory, written by the peer's own
    interpreter (transformers lives there)."""
    import open_clip

    config = matched_clip_config(open_clip.get_model_config(model))
    config_path = workdir / "peer-config.json"
    config_path.write_text(json.dumps(config))
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    out = workdir / "peer-model"
    subprocess.run(
        [
            str(PEER_ENV / "bin" / "python"),
            str(Path(__file__).with_name("peer_model.py")),
            *("--config", str(config_path), "--bpe", str(bpe), "--out", str(out)),
        ],
        check=True,
        env=_peer_environment(1),
    )
    return out


def _peer_environment(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITEEMBED_", "PYTHON"))}
    # Offline (nothing is fetched), and the torch threads our server and bare model get.
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": "1"})
    return env


def start_peer(model_dir: Path, port: int, threads: int, log_path: Path) -> serve_process.Child:
    # The compiled graph, the BetterTransformer rewrite and the vector disk cache stay off: the
    # first two change the forward pass, the last answers repeated identical requests from disk.
    args = [
        *("v2", "--model-id", str(model_dir), "--served-model-name", PEER_NAME),
        *("--engine", "torch", "--device", "cpu", "--batch-size", "32", "--port", str(port)),
        *("--no-compile", "--no-vector-disk-cache", "--no-bettertransformer"),
    ]
    return serve_process.Child(
        args,
        env=_peer_environment(threads),
        log_path=log_path,
        program=[str(PEER_ENV / "bin" / "infinity_emb")],
    )


def _check_widths(peer_url: str, our_url: str, image: bytes, dim: int) -> None:
    """Both servers embed the image at the measured model's width (the peer really runs the
    matched model, not whatever it fell back to)."""
    json_body = {"content-type": "application/json"}
    peer = httpx.post(
        f"{peer_url}/embeddings",
        content=peer_request(peer_url, image).body,
        headers=json_body,
        timeout=60,
    )
    ours = httpx.post(
        f"{our_url}/v1/embeddings",
        content=our_embeddings_request(our_url, image).body,
        headers=json_body,
        timeout=60,
    )
    for name, response in (("peer", peer), ("ours", ours)):
        response.raise_for_status()
        width = len(response.json()["data"][0]["embedding"])
        if width != dim:
            raise RuntimeError(f"{name} answered a {width}-wide embedding, expected {dim}")


def _sequential(url: str, request: lean_http.Request, count: int) -> dict[str, float]:
    latencies = lean_http.sequential(url, request, count=count)
    return summarize(latencies, sum(latencies), count)


def _concurrent(url: str, request: lean_http.Request, count: int) -> dict[str, float]:
    latencies, wall = lean_http.concurrent(url, request, concurrency=16, count=count)
    return summarize(latencies, wall, count)


def part_peer(
    args: argparse.Namespace, server: Server, backend: Any, workdir: Path
) -> dict[str, Any]:
    reason = unavailable()
    if reason is not None:
        print(f"  peer unavailable: {reason}", flush=True)
        return {"available": False, "reason": reason}
    image = test_image()
    threads = args.torch_threads or 1
    replace_ready_classes(server.database_url, server.model_id, 10, int(backend.embed_dim), "base")
    wait_for_size(server, 10, "base")
    model_dir = build_peer_model(args.model, workdir)
    port = serve_process.free_port()
    peer_url = f"http://127.0.0.1:{port}"
    log_path = workdir / "peer.log"
    child = start_peer(model_dir, port, threads, log_path)
    try:
        serve_process.wait_ready(child, peer_url, timeout=300, poll_s=0.5, path="/health")
        targets = {
            "peer_embeddings": (peer_url, peer_request(peer_url, image)),
            "ours_embeddings": (server.url, our_embeddings_request(server.url, image)),
            "ours_classify": (server.url, classify_request(server.url, image, raw=True)),
        }
        for url, request in targets.values():  # first-request costs paid before any round
            lean_http.sequential(url, request, count=20)
        _check_widths(peer_url, server.url, image, int(backend.embed_dim))
        n1 = max(int(args.seconds * 300), 50)
        n16 = max(int(args.seconds * 800), 200)
        rounds = []
        names = list(targets)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            row: dict[str, Any] = {
                "order": order,
                "bare_b1": bare_encode(backend, image, batch=1, count=n1),
                "bare_b32": bare_encode(backend, image, batch=32, count=max(n1 // 32, 10)),
            }
            for name in order:
                row[f"{name}_c1"] = _sequential(*targets[name], count=n1)
            for name in order:
                row[f"{name}_c16"] = _concurrent(*targets[name], count=n16)
            peer16 = row["peer_embeddings_c16"]["throughput_per_s"]
            for name in ("ours_embeddings", "ours_classify"):
                row[f"{name}_vs_peer_c16"] = row[f"{name}_c16"]["throughput_per_s"] / peer16
                row[f"{name}_vs_peer_c1_p50"] = (
                    row[f"{name}_c1"]["p50_ms"] / row["peer_embeddings_c1"]["p50_ms"]
                )
            rounds.append(row)
            print(
                "  round {}: c1 p50 peer {:.2f} / ours embeddings {:.2f} / ours classify {:.2f} "
                "ms; c16 peer {:.0f} / ours embeddings {:.0f} / ours classify {:.0f} img/s".format(
                    r + 1,
                    *(row[f"{n}_c1"]["p50_ms"] for n in names),
                    *(row[f"{n}_c16"]["throughput_per_s"] for n in names),
                ),
                flush=True,
            )
    finally:
        serve_process.stop(child)
    keys = [k for k in rounds[0] if k.endswith(("_vs_peer_c16", "_vs_peer_c1_p50"))]
    return {
        "available": True,
        "peer": "infinity-emb 0.0.78 (torch engine, CPU, --no-compile, no vector disk cache, "
        "batch size 32)",
        "model": matched_clip_config_summary(args.model),
        "image": {"format": "JPEG", "size": [256, 256], "bytes": len(image)},
        "rounds": rounds,
        **{key: statistics.median(r[key] for r in rounds) for key in keys},
        "client": "lean (benchmarks/perf/lean_http.py), the same for every server",
    }


def matched_clip_config_summary(model: str) -> dict[str, Any]:
    import open_clip

    return matched_clip_config(open_clip.get_model_config(model))
