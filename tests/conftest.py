"""Fixtures shared by the test modules that run traffic through a real gateway.

``stub`` is an upstream model server speaking the real OpenAI and Anthropic
wire formats (tests/upstream_stub.py); ``gateway`` is ``distillguard serve`` in
a subprocess in front of it. Both are module-scoped: one of each per test
module. A module that needs other gateway settings defines its own ``gateway``
fixture, which takes precedence over this one.

``robust_worlds`` (tests/sim_fixtures.py) is registered here rather than
imported by the modules that use it: an imported fixture is a separate
definition in each module, and would be built once per module.

It also starts ``mypy`` in the background once collection has selected
``test_mypy_is_clean``, and moves that test to the end of the run
(tests/background_checks.py says why).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.background_checks import BackgroundCheck, tool
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.sim_fixtures import robust_worlds  # noqa: F401 - a session fixture must be registered once, here
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


_MYPY_TEST = "tests/test_code_quality.py::test_mypy_is_clean"
_MYPY = pytest.StashKey[BackgroundCheck]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``test_mypy_is_clean`` goes last, so that its background run has the whole suite's time to finish in."""
    items.sort(key=lambda item: item.nodeid == _MYPY_TEST)  # stable: every other test keeps its place


def pytest_collection_finish(session: pytest.Session) -> None:
    mypy = tool("mypy")
    if mypy is not None and any(item.nodeid == _MYPY_TEST for item in session.items):
        session.config.stash[_MYPY] = BackgroundCheck([mypy])


def pytest_sessionfinish(session: pytest.Session) -> None:
    check = session.config.stash.get(_MYPY, None)
    if check is not None:
        check.stop()


@pytest.fixture
def background_mypy(request: pytest.FixtureRequest) -> BackgroundCheck:
    """The mypy run started at collection (a new one if this test was not among those collected then)."""
    check = request.config.stash.get(_MYPY, None)
    if check is None:
        mypy = tool("mypy")
        if mypy is None:
            pytest.skip("mypy is not installed (it comes with the dev extra)")
        check = request.config.stash[_MYPY] = BackgroundCheck([mypy])
    return check
