"""The shipped liteembed-mini checkpoint loads with open_clip and carries its vocabulary."""

from __future__ import annotations

import open_clip
import torch

from testbed import default_world
from tests.helpers.engine_files import ENGINE_DIR

ROOT = ENGINE_DIR
CKPT = ROOT / "checkpoints" / "liteembed-mini.pt"
CONFIG = ROOT / "model_configs" / "liteembed-mini.json"


def test_checkpoint_loads_and_has_vocabulary() -> None:
    assert CKPT.stat().st_size < 50 * 2**20
    blob = torch.load(CKPT, map_location="cpu", weights_only=True)
    assert set(blob) >= {"state_dict", "vocabulary", "meta"}
    if "liteembed-mini" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG)
    model = open_clip.create_model("liteembed-mini")
    model.load_state_dict(blob["state_dict"], strict=True)
    vocab = blob["vocabulary"]
    world = default_world()
    assert isinstance(vocab, list) and all(isinstance(w, str) for w in vocab)
    assert set(vocab) == set(world.caption_words())
    assert {c.name for c in world.base_classes} <= set(vocab)
    assert not {c.name for c in world.never_classes} & set(vocab)
    # the model runs on a rendered image and a prompt
    model.eval()
    with torch.no_grad():
        from testbed import normalize

        f = model.encode_image(normalize(world.render_tensor(["hexagon"], 1, 0)))
        t = model.encode_text(open_clip.get_tokenizer("liteembed-mini")(["a photo of a hexagon."]))
    assert f.shape == t.shape == (1, 128)
