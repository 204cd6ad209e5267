from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import GatewayProcess, gateway


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    """One embedded gateway process shared by a test module (default settings)."""
    with gateway() as g:
        yield g
