"""Fixtures shared by the test modules that run traffic through a real gateway.

``stub`` is an upstream model server speaking the real OpenAI and Anthropic
wire formats (tests/upstream_stub.py); ``gateway`` is ``distillguard serve`` in
a subprocess in front of it. Both are module-scoped: one of each per test
module. A module that needs other gateway settings defines its own ``gateway``
fixture, which takes precedence over this one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import UpstreamStub


@pytest.fixture(scope="module")
def stub() -> Iterator[UpstreamStub]:
    upstream = UpstreamStub().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gw"), stub.base_url)
    yield gw
    gw.stop()
