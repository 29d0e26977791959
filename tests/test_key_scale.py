"""Scale in accounts and keys: incremental key-table updates, bulk creation (admin API and CLI).

The incremental tests count the registry's whole-table loads with a spy: a
key created, revoked or re-limited through the admin API must work (or stop
working) on the very next request without one, in the gateway that made the
change and, through the change counter, in another gateway on the same store.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from distillguard.config import Settings
from distillguard.gateway.app import Gateway
from distillguard.store.registry import KeyRecord, NewAccount, Registry
from tests.gateway_fixtures import RunningGateway
from tests.pg_fixtures import emptied_database_url, postgres  # noqa: F401 - fixture
from tests.upstream_stub import UpstreamStub

ADMIN = "scale-admin-token"
CHAT = {"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}


class _CountingRegistry(Registry):
    """A registry that counts whole-table loads (what must not happen per change)."""

    snapshots = 0

    def key_snapshot(self) -> list[KeyRecord]:
        self.snapshots += 1
        return super().key_snapshot()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'keys.db'}"


async def _start(database_url: str, stub: UpstreamStub) -> tuple[Gateway, httpx.AsyncClient]:
    settings = Settings(database=database_url, admin_token=ADMIN,
                        upstreams=[{"name": "stub", "base_url": stub.base_url, "models": ["*"], "timeout_s": 3}])
    gateway = Gateway(settings, registry=_CountingRegistry(database_url), poll_interval_s=0.05)
    await gateway.startup()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway", timeout=10)
    return gateway, client


@pytest.fixture
async def replicas(database_url: str, stub: UpstreamStub) -> AsyncIterator[list[tuple[Gateway, httpx.AsyncClient]]]:
    started = [await _start(database_url, stub), await _start(database_url, stub)]
    try:
        yield started
    finally:
        for gateway, client in started:
            await client.aclose()
            await gateway.shutdown()
            gateway.registry.close()


async def _admin(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> httpx.Response:
    return await client.request(method, "/admin/v1" + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"})


async def _chat(client: httpx.AsyncClient, secret: str) -> int:
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"})
    return response.status_code


async def _eventually(client: httpx.AsyncClient, secret: str, status: int) -> None:
    deadline = time.monotonic() + 5
    while (got := await _chat(client, secret)) != status:
        assert time.monotonic() < deadline, f"still {got}, expected {status}"
        await asyncio.sleep(0.05)


async def test_admin_changes_apply_one_key_at_a_time_here_and_in_another_gateway(
        replicas: list[tuple[Gateway, httpx.AsyncClient]]) -> None:
    (a, client_a), (b, client_b) = replicas
    registry_a = a.registry
    assert isinstance(registry_a, _CountingRegistry) and isinstance(b.registry, _CountingRegistry)
    for i in range(30):  # keys that are not touched: they must not be reloaded either
        account = registry_a.create_account(f"bystander-{i}")
        registry_a.create_key(account["account_id"])
    deadline = time.monotonic() + 10
    while not len(a.keys) == len(b.keys) == 30:  # picked up by both pollers (changes from "another process")
        assert time.monotonic() < deadline, (len(a.keys), len(b.keys))
        await asyncio.sleep(0.05)

    account = (await _admin(client_a, "POST", "/accounts", {"name": "new"})).json()
    key = (await _admin(client_a, "POST", f"/accounts/{account['account_id']}/keys", {})).json()
    assert await _chat(client_a, key["secret"]) == 200  # the very next request, no poll waited for
    await _eventually(client_b, key["secret"], 200)  # the other replica, through the change counter

    assert (await _admin(client_a, "PUT", f"/accounts/{account['account_id']}/limits", {"requests_per_min": 2})).status_code == 200
    assert [await _chat(client_a, key["secret"]) for _ in range(2)] == [200, 429]  # the 200 above counts

    assert (await _admin(client_a, "POST", f"/keys/{key['key_id']}/revoke")).status_code == 200
    response = await client_a.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key['secret']}"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "revoked_api_key"
    await _eventually(client_b, key["secret"], 401)

    assert (a.full_key_loads, b.full_key_loads) == (1, 1)  # the start-up load, nothing since
    assert (registry_a.snapshots, b.registry.snapshots) == (1, 1)
    assert len(a.keys) == len(b.keys) == 31


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = emptied_database_url(request, tmp_path / "changes.db", "key_changes")
    if request.param == "postgresql":
        from sqlalchemy import text

        registry = Registry(url)
        with registry.engine.begin() as conn:  # a clean registry: these tests count keys
            for table in ("installs", "account_attributes", "account_external_ids", "api_keys", "accounts"):
                conn.execute(text(f"DELETE FROM {table}"))
            conn.execute(text("UPDATE counters SET value = 0 WHERE name = 'key_changes_pruned'"))
        registry.close()
    return url


def test_key_changes_since_returns_only_the_keys_a_change_touched(any_database_url: str) -> None:
    registry = Registry(any_database_url)
    try:
        created = registry.create_accounts([NewAccount(f"a{i}", key=True) for i in range(20)])
        start = registry.change_counter()
        assert registry.key_changes_since(start) is not None and registry.key_changes_since(start).records == []  # type: ignore[union-attr]

        registry.revoke_key(created[3]["key_id"])
        delta = registry.key_changes_since(start)
        assert delta is not None and delta.counter == start + 1
        assert [(r.key_id, r.revoked) for r in delta.records] == [(created[3]["key_id"], True)]

        second = registry.create_key(created[5]["account_id"])
        registry.set_account_status(created[7]["account_id"], "suspended")
        delta = registry.key_changes_since(start + 1)
        assert delta is not None
        assert sorted((r.key_id, r.account_status) for r in delta.records) == sorted(
            [(second["key_id"], "active"), (created[7]["key_id"], "suspended")])
        assert registry.key_changes_since(-1) is None  # nothing loaded yet: load everything

        limited = registry.create_accounts([NewAccount("limited", "acme", {"requests_per_min": 5}, key=True,
                                                       key_limits={"tokens_per_min": 7, "daily_tokens": None})])[0]
        record = {r.key_id: r for r in registry.key_snapshot()}[limited["key_id"]]
        assert (record.org_id, dict(record.account_limits), dict(record.key_limits), record.revoked) == (
            "acme", {"requests_per_min": 5}, {"tokens_per_min": 7, "daily_tokens": None}, False)
        assert registry.get_account(limited["account_id"])["limits"] == {"requests_per_min": 5}  # type: ignore[index]
    finally:
        registry.close()


def test_a_gateway_behind_the_pruned_change_log_is_told_to_reload_everything(database_url: str) -> None:
    registry = Registry(database_url)
    try:
        account = registry.create_account("old")
        start = registry.change_counter()
        registry.create_key(account["account_id"])
        with registry.engine.begin() as conn:
            registry._prune_key_changes(conn, time.time() + 1)  # everything is older than the cutoff
        assert registry.key_changes_since(start) is None
        assert registry.key_changes_since(registry.change_counter()) is not None
    finally:
        registry.close()


# -- bulk creation -------------------------------------------------------------------------------------------


async def test_bulk_endpoint_creates_accounts_and_keys_that_work_at_once(
        replicas: list[tuple[Gateway, httpx.AsyncClient]]) -> None:
    (a, client_a), (b, client_b) = replicas
    items = [{"name": f"bulk-{i}", "org": "acme", "key": True} for i in range(200)]
    items.append({"name": "limited", "limits": {"requests_per_min": 1}, "key": {"limits": {"tokens_per_min": 100000}}})
    items.append({"name": "keyless"})
    response = await _admin(client_a, "POST", "/accounts/bulk", {"accounts": items})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created"] == {"accounts": 202, "keys": 201}
    data = body["data"]
    assert [d["name"] for d in data] == [i["name"] for i in items]
    assert data[-1]["key_id"] is None and data[-1]["secret"] is None
    assert len({d["secret"] for d in data[:-1]}) == 201 and all(d["secret"].startswith("sk-dg-") for d in data[:-1])
    assert await _chat(client_a, data[0]["secret"]) == 200
    assert [await _chat(client_a, data[200]["secret"]) for _ in range(2)] == [200, 429]  # its account limit applies
    await _eventually(client_b, data[150]["secret"], 200)
    assert (a.full_key_loads, b.full_key_loads) == (1, 1)
    accounts = {x["account_id"]: x for x in a.registry.list_accounts()}
    assert accounts[data[0]["account_id"]]["org_id"] == "acme"
    audit = a.registry.list_audit(limit=1000)
    assert sum(1 for row in audit if row["action"] == "account.create") == 202
    assert sum(1 for row in audit if row["action"] == "key.create") == 201


@pytest.mark.parametrize(("body", "where"), [
    ({"accounts": [{"name": ""}]}, "accounts.0.name"),
    ({"accounts": [{"name": "x", "limits": {"requests_per_min": -1}}]}, "accounts.0.limits.requests_per_min"),
    ({"accounts": [{"name": "x", "key": "yes"}]}, "accounts.0.key"),
    ({"accounts": [{"name": "x", "colour": "red"}]}, "accounts.0.colour"),
    ({"accounts": []}, "accounts"),
    ({"accounts": [{"name": "same"}, {"name": "other"}, {"name": "same"}]}, "accounts.2.name"),
    ({"accounts": [{"name": f"n{i}"} for i in range(10_001)]}, "accounts"),
    ({"accounts": [{"name": "a", "external_id": "crm:1"}, {"name": "b", "external_id": "crm:1"}]}, "accounts.1.external_id"),
    ({"accounts": [{"name": "a", "external_id": "has space"}]}, "accounts.0.external_id"),
])
async def test_bulk_endpoint_refuses_bad_batches_whole(replicas: list[tuple[Gateway, httpx.AsyncClient]],
                                                       body: dict[str, Any], where: str) -> None:
    (a, client_a), _ = replicas
    before = len(a.registry.list_accounts())
    response = await _admin(client_a, "POST", "/accounts/bulk", body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request" and where in response.json()["error"]["message"]
    assert len(a.registry.list_accounts()) == before  # nothing of a refused batch is created


async def test_a_bulk_batch_sent_again_finds_its_accounts_by_external_id(replicas: list[tuple[Gateway, httpx.AsyncClient]]) -> None:
    """A retry after a timeout (here: to the other replica) creates only what the first attempt did not."""
    (a, client_a), (_, client_b) = replicas
    items = [{"name": f"crm-{i}", "external_id": f"crm:{i}", "key": True} for i in range(3)]
    first = await _admin(client_a, "POST", "/accounts/bulk", {"accounts": items})
    again = await _admin(client_b, "POST", "/accounts/bulk", {"accounts": [*items, {"name": "crm-3", "external_id": "crm:3"}]})
    assert first.status_code == again.status_code == 201, again.text
    assert first.json()["created"] == {"accounts": 3, "keys": 3} and first.json()["existing"] == 0
    assert again.json()["created"] == {"accounts": 1, "keys": 0} and again.json()["existing"] == 3
    data = again.json()["data"]
    assert [d["status"] for d in data] == ["exists", "exists", "exists", "created"]
    assert [d["account_id"] for d in data[:3]] == [d["account_id"] for d in first.json()["data"]]
    assert all(d["secret"] is None and d["key_id"] is None for d in data[:3])  # shown once, in the first answer
    assert sorted(x["name"] for x in a.registry.list_accounts() if x["name"].startswith("crm-")) == ["crm-0", "crm-1", "crm-2", "crm-3"]
    assert len(a.registry.list_keys()) == 3


def test_two_retries_of_one_batch_racing_create_it_once(any_database_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    registries = [Registry(any_database_url), Registry(any_database_url)]
    try:
        batch = [NewAccount(f"race-{i}", key=True, external_id=f"race:{i}") for i in range(200)]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda r: r.create_accounts(batch), registries))
        assert sorted({row["status"] for row in result}.pop() for result in results) == ["created", "exists"]
        assert [r["account_id"] for r in results[0]] == [r["account_id"] for r in results[1]]
        assert len(registries[0].list_accounts()) == 200 and len(registries[0].list_keys()) == 200
        mixed = registries[1].create_accounts([NewAccount("race-0", external_id="race:0"), NewAccount("fresh", external_id="race:new"),
                                               NewAccount("no id")])
        assert [m["status"] for m in mixed] == ["exists", "created", "created"]
    finally:
        for registry in registries:
            registry.close()


async def test_bulk_endpoint_has_a_body_limit(replicas: list[tuple[Gateway, httpx.AsyncClient]]) -> None:
    (_, client_a), _ = replicas
    huge = {"accounts": [{"name": "x" * 200, "org": "y" * 200} for _ in range(25_000)]}
    response = await _admin(client_a, "POST", "/accounts/bulk", huge)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


# -- CLI -----------------------------------------------------------------------------------------------------


def _cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distillguard.cli", *args, "--config", str(config)],
                          input=stdin, capture_output=True, text=True, timeout=60, check=False)


def test_cli_imports_accounts_from_jsonl_and_refuses_a_bad_file_whole(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": database}))
    lines = [json.dumps({"name": f"cli-{i}", "key": True}) for i in range(1200)] + [json.dumps({"name": "no key", "org": "o"}), ""]
    source = tmp_path / "accounts.jsonl"
    source.write_text("\n".join(lines))
    done = _cli(config, "accounts", "import", str(source), "--batch", "500")
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(out) == 1201 and out[0]["name"] == "cli-0" and out[0]["secret"].startswith("sk-dg-")
    assert out[-1]["key_id"] is None and out[-1]["org_id"] == "o"
    assert "created 1201 accounts and 1200 keys" in done.stderr
    registry = Registry(database)
    try:
        assert len(registry.list_accounts()) == 1201 and len(registry.list_keys()) == 1200
        secrets = {r.secret_hash for r in registry.key_snapshot()}
        from distillguard.store.registry import hash_secret

        assert hash_secret(out[7]["secret"]) in secrets

        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"name": "fine"}) + "\n" + json.dumps({"name": "x", "limits": {"daily_tokens": "lots"}}) + "\n")
        refused = _cli(config, "accounts", "import", str(bad))
        assert refused.returncode == 2 and "line 2" in refused.stderr and "limits.daily_tokens" in refused.stderr
        assert len(registry.list_accounts()) == 1201  # the good first line was not created either

        with_ids = tmp_path / "with_ids.jsonl"
        with_ids.write_text("".join(json.dumps({"name": f"crm-{i}", "external_id": f"crm:{i}", "key": True}) + "\n" for i in range(3)))
        assert _cli(config, "accounts", "import", str(with_ids)).returncode == 0
        rerun = _cli(config, "accounts", "import", str(with_ids))  # the first run's answer was lost: run it again
        assert rerun.returncode == 0, rerun.stderr
        assert [json.loads(line)["status"] for line in rerun.stdout.splitlines()] == ["exists"] * 3
        assert "created 0 accounts and 0 keys" in rerun.stderr and "3 already existed" in rerun.stderr
        assert len(registry.list_accounts()) == 1204
    finally:
        registry.close()


# -- limiter state per key -------------------------------------------------------------------------------------


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_idle_key_keeps_only_todays_tokens_and_its_daily_quota_still_holds() -> None:
    from distillguard.state import MemoryState, Quota, Refusal

    clock = _Clock(86_400.0 * 20_000 + 3600)  # 01:00 UTC on some day
    state = MemoryState(clock)
    quota = (Quota("key:a", None, None, None, 100),)
    first = state.admit_now(quota, 60, "r1")
    assert first is not None and not isinstance(first, Refusal)
    clock.now += 61
    state.sweep(state.now_ms())
    assert "key:a" not in state._subjects and state._parked == {"key:a": 60}  # no window log kept for an idle key
    refused = state.admit_now(quota, 50, "r2")
    assert isinstance(refused, Refusal) and refused.code == "daily_quota_exceeded"  # 60 + 50 > 100: the parked tokens count
    admitted = state.admit_now(quota, 40, "r3")
    assert admitted is not None and not isinstance(admitted, Refusal)
    clock.now += 61
    state.sweep(state.now_ms())
    state.settle(admitted, 10)  # settled after its subject was swept (a request over 60 s): today's count follows
    assert state.subject("key:a").day_tokens == 70
    clock.now += 86_400
    state.sweep(state.now_ms())
    assert state._parked == {} and not state._subjects  # a new day forgets yesterday's tokens


def test_limits_are_resolved_per_request_so_a_key_change_needs_no_invalidation() -> None:
    from distillguard.config import LimitSettings
    from distillguard.gateway.limits import Limiter

    limiter = Limiter(LimitSettings(requests_per_min=60, tokens_per_min=None, concurrent_requests=None, daily_tokens=None))
    record = KeyRecord("key_1", "h", "acct_1", None, False, "active")
    assert limiter.quotas(record)[0].requests_per_min == 60
    changed = KeyRecord("key_1", "h", "acct_1", None, False, "active", {"requests_per_min": 5}, {"tokens_per_min": 9})
    key_quota, account_quota = limiter.quotas(changed)
    assert (key_quota.subject, key_quota.requests_per_min, account_quota.subject, account_quota.tokens_per_min) == (
        "key:key_1", 5, "acct:acct_1", 9)
    assert not hasattr(limiter, "_quotas")  # no per-key cache that traffic over many keys would fill


def test_admin_cli_imports_through_the_bulk_endpoint_in_batches(gateway: RunningGateway, tmp_path: Path) -> None:
    source = tmp_path / "remote.jsonl"
    source.write_text("\n".join([json.dumps({"name": "remote-a", "key": True}),
                                 json.dumps({"name": "remote-b", "org": "o", "key": {"limits": {"requests_per_min": 1}}}),
                                 json.dumps({"name": "remote-c"})]) + "\n")
    done = subprocess.run([sys.executable, "-m", "distillguard.cli", "admin", "accounts", "import", str(source), "--batch", "2",
                           "--url", gateway.root_url, "--token", gateway.admin_token],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["name"] for o in out] == ["remote-a", "remote-b", "remote-c"] and out[2]["secret"] is None
    assert "created 3 accounts and 2 keys" in done.stderr
    statuses = [httpx.post(gateway.base_url + "/chat/completions", headers={"Authorization": f"Bearer {out[1]['secret']}"},
                           json=CHAT, timeout=10).status_code for _ in range(2)]
    assert statuses == [200, 429]  # created through the gateway: usable at once, with the key's own limit

    source.write_text(json.dumps({"name": "ok"}) + "\n" + json.dumps({"name": "bad", "key": 3}) + "\n")
    refused = subprocess.run([sys.executable, "-m", "distillguard.cli", "admin", "accounts", "import", str(source),
                              "--url", gateway.root_url, "--token", gateway.admin_token],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "line 2" in refused.stderr and "key" in refused.stderr
