"""`liteembed bank FOLDER`: an operator's images become the model's reference bank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from liteembed import load_backend
from liteembed.bank import bank_cache_path, load_bank
from tests.helpers.images import COLOURS, image_bytes

REPO = Path(__file__).resolve().parents[2]


def run_bank(folder: Path, cache_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LITEEMBED_MODEL": "liteembed-tiny",
        "LITEEMBED_PRETRAINED": "random",
        "LITEEMBED_DEVICE": "cpu",
        "LITEEMBED_CACHE_DIR": str(cache_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "bank", str(folder), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def test_a_folder_of_word_subfolders_becomes_the_models_bank(tmp_path: Path) -> None:
    # Its own cache: a bank in the tests' shared cache would reach every other test's training.
    cache_dir = tmp_path / "cache"
    for word, colour in (("green", "green"), ("blue", "blue")):
        (tmp_path / "images" / word).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "images" / word / f"{i}.png").write_bytes(
                image_bytes(COLOURS[colour], seed=i)
            )
    result = run_bank(tmp_path / "images", cache_dir, "--per-word", "2")
    assert result.returncode == 0, result.stderr
    model_id = load_backend("liteembed-tiny", "random", device="cpu").model_id
    bank = load_bank(bank_cache_path(cache_dir, model_id), model_id)
    assert sorted(bank.words) == ["blue", "green"]
    assert len(bank.features) == 4  # two per word, as asked
    assert bank.word_threshold is not None


def test_a_subfolder_that_is_not_a_vocabulary_word_is_refused(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    folder = tmp_path / "images" / "qqzzxxyy"
    folder.mkdir(parents=True)
    folder.joinpath("0.png").write_bytes(image_bytes(COLOURS["green"]))
    result = run_bank(tmp_path / "images", cache_dir)
    assert result.returncode == 2
    assert "qqzzxxyy" in result.stderr
