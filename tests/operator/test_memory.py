"""`memory`: malloc_trim after big passes, and one `gc.freeze` after the first pass."""

from __future__ import annotations

import gc

import pytest

from accordion.operator import memory


def test_freeze_moves_what_is_alive_out_of_the_collectors_generations_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "_frozen", False)
    before = gc.get_freeze_count()
    try:
        assert memory.freeze()
        frozen = gc.get_freeze_count()
        assert frozen > before
        assert not memory.freeze()  # once only: later objects stay collectable
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
