"""Model load leaves nothing for the first registration to encode once per model."""

from __future__ import annotations

import pytest

from service.core.config import Settings


def test_load_encodes_the_noise_images_even_when_the_bank_sets_the_word_threshold(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import liteembed.bank
    import liteembed.threshold
    from service.runtime import load_runtime

    # As with a shipped bank that carries its own plain-word threshold: no noise encoded there.
    monkeypatch.setattr(liteembed.bank, "plain_word_threshold", lambda *args: 0.3)
    runtime = load_runtime(settings)
    assert runtime.backend in liteembed.threshold._NOISE_FEATURES
