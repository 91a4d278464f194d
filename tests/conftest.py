"""Shared fixtures (shared helpers are in tests/helpers.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import tiny_outputs


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny outputs tree: three tiny runs and their table (:func:`tests.helpers.tiny_outputs`)."""
    return tiny_outputs(tmp_path_factory.mktemp("tiny_outputs"))
