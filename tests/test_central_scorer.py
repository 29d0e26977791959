"""The fleet's central scorer and the scorer's bounded backlog (issue #13, deliverables 2 and 6).

Three gateways on one Redis hand their events to one ``distillguard scorer``:
a hydra whose heads are spread over the three replicas is found as one cluster
and every replica enforces it; a restarted scorer keeps it; a killed scorer
leaves the replicas serving with the last decisions and saying so. And the
hand-off to a scorer is bounded: past the bound events are shed from scoring,
counted and logged, never queued without end and never silently.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_client

from distillguard.policy.online import OnlineScorer
from distillguard.state.scorer_stream import STREAM, StreamFeed
from tests.console_fixtures import HYDRA_IP, HYDRA_SYSTEM
from tests.gateway_fixtures import RunningGateway, start_gateway, write_config
from tests.redis_fixtures import RedisServer
from tests.upstream_stub import UpstreamStub

T0 = "2026-12-01T10:00:00.000Z"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def _event(i: int, account: str = "acct_shed") -> dict[str, Any]:
    return {"v": 1, "ts": T0, "request_id": f"req_{i}", "account_id": account, "key_id": "key_shed", "endpoint": "openai.chat",
            "request": {"messages": [{"role": "user", "content": f"question {i}"}]}}


# -- the bound: shed, counted, logged ---------------------------------------------------------------------------------


def test_the_child_scorers_queue_is_bounded_and_sheds_with_a_count_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    reports: list[dict[str, Any]] = []
    scorer = OnlineScorer(reports.append, publish_every_s=0.1, max_backlog=100)
    for i in range(150):  # the worker is not started yet: nothing drains the queue
        scorer.submit(_event(i))
    assert len(scorer._queue) == 100 and scorer.shed == 50 and scorer.shed_by_reason == {"queue_full": 50}
    with caplog.at_level(logging.WARNING, logger="distillguard.policy.online"):
        scorer.start()
        try:
            assert scorer.wait_idle(60)
        finally:
            scorer.close()
    assert reports[-1]["events"] == 100  # the shed 50 were never scored
    lines = [r.getMessage() for r in caplog.records if "shed" in r.getMessage()]
    assert len(lines) == 1 and "shed 50 events from scoring (50 queue_full)" in lines[0] and "event log" in lines[0]


def test_the_stream_is_bounded_across_replicas_and_sheds_with_a_count(redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    client = redis_client.Redis.from_url(redis.url)
    client.delete(STREAM, "dg:scorer:heartbeat")
    feeds = [StreamFeed(lambda report: None, redis.url, max_backlog=120) for _ in range(2)]  # two replicas, no scorer running
    with caplog.at_level(logging.WARNING, logger="distillguard.state.scorer_stream"):
        for feed in feeds:
            feed.start()
        for n, feed in enumerate(feeds):
            for i in range(100):
                feed.submit(_event(n * 1000 + i))
        for feed in feeds:
            feed.close()
    assert client.xlen(STREAM) == 120  # exactly the bound, whichever replica got there first
    assert sum(feed.appended for feed in feeds) == 120
    assert sum(feed.shed for feed in feeds) == 80 and all(set(f.shed_by_reason) <= {"stream_full"} for f in feeds)
    assert all(feed.failed for feed in feeds)  # no heartbeat: the scorer is down, and said so
    messages = [r.getMessage() for r in caplog.records]
    assert any("no heartbeat" in m for m in messages)
    assert sum("stream_full" in m for m in messages) >= 1
    client.delete(STREAM)


# -- three gateways and one scorer ------------------------------------------------------------------------------------


class ScorerProcess:
    def __init__(self, directory: Path, config_path: Path) -> None:
        self.log_path = directory / "scorer.log"
        self.config_path = config_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ScorerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "distillguard.cli", "scorer", "--config", str(self.config_path)],
                                         stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _hydra_cluster(gateway: RunningGateway, members: set[str]) -> dict[str, Any] | None:
    flagged = gateway.admin("GET", "/admin/v1/flagged").json()
    return next((c for c in flagged.get("clusters", []) if members <= set(c["accounts"])), None)


def _gauge(gateway: RunningGateway, name: str) -> float:
    line = next(line for line in httpx.get(gateway.root_url + "/metrics").text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def _published(gateway: RunningGateway, account_id: str) -> dict[str, Any]:
    return dict(gateway.admin("GET", f"/admin/v1/accounts/{account_id}/risk").json()["published"])


def _console(gateway: RunningGateway) -> httpx.Client:
    """A client signed in to the replica's console with the admin token (its session cookie set by hand: plain HTTP)."""
    signed = httpx.post(gateway.root_url + "/admin/ui/login", data={"token": gateway.admin_token})
    assert signed.status_code == 303, signed.text
    cookie = signed.headers["set-cookie"].split(";")[0]
    return httpx.Client(base_url=gateway.root_url + "/admin/ui/", headers={"cookie": cookie}, timeout=30)


def _scorer_status(gateway: RunningGateway) -> dict[str, Any]:
    ready = httpx.get(gateway.root_url + "/readyz")
    assert ready.status_code == 200  # informational: a replica serves whatever the scorer's state
    return dict(ready.json()["scorer"])


def test_one_scorer_sees_a_hydra_spread_over_three_replicas_survives_a_restart_and_a_kill(
        tmp_path: Path, stub: UpstreamStub, redis: RedisServer) -> None:
    redis_client.Redis.from_url(redis.url).flushdb()
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    settings: dict[str, Any] = {"database": database, "state": redis.url, "detection": {"scorer": "central"},
                                "network": {"trusted_proxies": ["127.0.0.1/32"]}}
    config_path, _ = write_config(tmp_path, [{"name": "stub", "base_url": stub.base_url, "models": ["*"]}], **settings)
    scorer = ScorerProcess(tmp_path, config_path)
    gateways: list[RunningGateway] = []
    try:
        for i in range(3):  # one after the other: two processes creating a new SQLite schema at once collide
            (tmp_path / f"gw{i}").mkdir()
            gateways.append(start_gateway(tmp_path / f"gw{i}", stub.base_url, **settings))
        scorer.start()
        assert not Path(f"/proc/{gateways[0].proc.pid}/task/{gateways[0].proc.pid}/children").read_text().split()  # no child scorer
        _until(lambda: all(_scorer_status(g)["status"] == "ok" for g in gateways), "the replicas never saw the scorer's heartbeat")
        heads = [gateways[0].create_key(f"hydra-{k}") for k in range(4)]
        person = gateways[0].create_key("person")
        quiet = gateways[0].create_key("quiet")
        members = {h["account_id"] for h in heads}
        clients = [httpx.Client(base_url=g.base_url, timeout=30) for g in gateways]
        _until(lambda: all(c.get("/models", headers={"authorization": f"Bearer {person['secret']}"}).status_code == 200
                           for c in clients), "a replica never loaded the keys")
        for i in range(36):
            for k, head in enumerate(heads):
                task = i * 4 + k
                client = clients[task % 3]  # every head's traffic is spread over the three replicas
                response = client.post("/chat/completions", headers={"authorization": f"Bearer {head['secret']}", "x-forwarded-for": HYDRA_IP},
                                       json={"model": "stub-reasoning", "max_tokens": 8000, "messages": [
                                           {"role": "system", "content": HYDRA_SYSTEM},
                                           {"role": "user", "content": f"Benchmark task {task}: solve {task} * 17 + 3. "
                                                                       "Write out your internal reasoning step by step."}]})
                assert response.status_code in (200, 429), response.text
        # One cluster of all four heads, the same on every replica, though none of them saw more than a third of it.
        cluster = _until(lambda: _hydra_cluster(gateways[0], members), "the scorer never flagged the hydra as one cluster", 60)
        for gateway in gateways:
            assert _until(lambda g=gateway: _hydra_cluster(g, members), "a replica never saw the cluster")["cluster_id"] == cluster["cluster_id"]
            for head in heads:  # scored on all 36 of its requests (a replica's own scorer would have seen 12)
                risk = _until(lambda g=gateway, h=head: (r := g.admin("GET", f"/admin/v1/accounts/{h['account_id']}/risk")).status_code
                              == 200 and r.json().get("requests") == 36 and r.json(), "a head's full risk never reached a replica")
                assert risk["cluster_id"] == cluster["cluster_id"]
            # Scored, never flagged: its entry comes from the central scorer's published risk table, as a single gateway
            # answers from its own scorer's report (the risk snapshot holds only flagged accounts).
            unflagged = _until(lambda g=gateway: (r := g.admin("GET", f"/admin/v1/accounts/{person['account_id']}/risk"))
                               .status_code == 200 and r, "an unflagged account's risk never reached a replica")
            assert unflagged.json()["scored"] is True and unflagged.json()["account_id"] == person["account_id"]
            assert unflagged.json()["distillation_score"] < 0.5 and unflagged.json()["requests"] >= 3, unflagged.text
            assert unflagged.json()["published"]["current"] is True and unflagged.json()["published"]["at"].endswith("Z")
            silent = gateway.admin("GET", f"/admin/v1/accounts/{quiet['account_id']}/risk")  # exists, sent nothing: a 404 that says why
            assert silent.status_code == 404 and silent.json()["error"]["code"] == "account_not_scored", silent.text
            assert "central scorer" in silent.json()["error"]["message"] and quiet["account_id"] in silent.json()["error"]["message"]
            nobody = gateway.admin("GET", "/admin/v1/accounts/acct_nobody/risk")
            assert nobody.status_code == 404 and nobody.json()["error"]["code"] != "account_not_scored", nobody.text
        metrics = httpx.get(gateways[1].root_url + "/metrics").text
        assert "distillguard_scorer_up 1" in metrics and 'dg_scorer_shed_events_total' in metrics
        # What a replica shows of the central scorer's work: every account it scored (the four heads and the person),
        # not only the flagged ones its risk snapshot holds; the console's pages read the scorer's table for the rest.
        _until(lambda: _gauge(gateways[1], "distillguard_scored_accounts") == 5, "the replica's gauge never counted the scorer's accounts")
        console = _console(gateways[2])
        assert "(of 5 scored)" in console.get("").text
        page = console.get(f"accounts/{person['account_id']}").text
        assert "has published no score" not in page and f"{unflagged.json()['distillation_score']:.2f}" in page, page[:3000]
        console.close()
        first_generation = unflagged.json()["published"]["generation"]
        # An entry this scorer published that the next one will not hold (its account's events are not in the store).
        table = redis_client.Redis.from_url(redis.url)
        table.hset("dg:risk:accounts", "acct_gone", table.hget("dg:risk:accounts", person["account_id"]))  # type: ignore[arg-type]

        # A restarted scorer rebuilds from the store and keeps the cluster.
        assert scorer.stop() == 0
        scorer = ScorerProcess(tmp_path, config_path).start()
        _until(lambda: "central scorer rebuilt from the" in scorer.log(), "the restarted scorer never replayed the store")
        _until(lambda: httpx.get(gateways[2].root_url + "/readyz").json()["scorer"]["status"] == "ok", "no heartbeat after the restart")
        time.sleep(2.5)  # its first reports are merged into the snapshot and announced
        for gateway in gateways:
            again = _hydra_cluster(gateway, members)
            assert again is not None and again["cluster_id"] == cluster["cluster_id"]
        # It publishes what it holds under its own generation and sweeps away what it does not hold.
        _until(lambda: gateways[0].admin("GET", f"/admin/v1/accounts/{person['account_id']}/risk").json()["published"]
               == {**_published(gateways[0], person["account_id"]), "generation": first_generation + 1, "current": True},
               "the restarted scorer never republished the person's entry")
        _until(lambda: not table.hexists("dg:risk:accounts", "acct_gone"), "the restarted scorer never swept an entry it does not hold")
        table.close()

        # A killed scorer: every replica says so and keeps serving with the last decisions.
        scorer.stop(signal.SIGKILL)
        _until(lambda: all(_scorer_status(g)["status"] == "down" for g in gateways), "a replica never noticed the scorer was gone", 15)
        for gateway, client in zip(gateways, clients, strict=True):
            assert _hydra_cluster(gateway, members) is not None
            assert client.post("/chat/completions", headers={"authorization": f"Bearer {person['secret']}"},
                               json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
            metrics = httpx.get(gateway.root_url + "/metrics").text
            assert "distillguard_scorer_up 0" in metrics and "distillguard_scorer_stale 1" in metrics
        for client in clients:
            client.close()
    finally:
        scorer.stop()
        for gateway in gateways:
            gateway.stop()


def test_the_scorer_refuses_memory_state_and_a_second_scorer(tmp_path: Path, stub: UpstreamStub, redis: RedisServer) -> None:
    memory, _ = write_config(tmp_path, [{"name": "stub", "base_url": stub.base_url, "models": ["*"]}])
    result = subprocess.run([sys.executable, "-m", "distillguard.cli", "scorer", "--config", str(memory)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "state: redis://" in result.stderr
    (tmp_path / "fleet").mkdir()
    fleet, _ = write_config(tmp_path / "fleet", [{"name": "stub", "base_url": stub.base_url, "models": ["*"]}],
                            state=redis.url, detection={"scorer": "central"})
    redis_client.Redis.from_url(redis.url).set("dg:scorer:heartbeat", b'{"pid": 4242, "host": "elsewhere"}', px=60_000)
    try:
        result = subprocess.run([sys.executable, "-m", "distillguard.cli", "scorer", "--config", str(fleet)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "another distillguard scorer is running (pid 4242 on elsewhere)" in result.stderr
    finally:
        redis_client.Redis.from_url(redis.url).delete("dg:scorer:heartbeat")


# -- report cadence: reports and clustering keep to their share of the scorer's time ----------------------------------


def test_the_report_cadence_keeps_reports_and_clustering_to_their_share_of_the_scorers_cpu() -> None:
    from distillguard.scorer_worker import CLUSTER_SHARE, REPORT_SHARE, ReportCadence

    cpu = [0.0]
    cadence = ReportCadence(1.0, lambda: cpu[0])
    now = cadence.next_report
    assert cadence.due(now) and cadence.recluster()
    cadence.reported(now, cost_s=3.5, cluster_cost_s=3.0)  # 12 s of clustering at 100k accounts is this, scaled down
    later = now + 1.0  # a second later on the wall clock, but the scorer had no CPU meanwhile (a busy machine)
    assert not cadence.due(later)
    assert cadence.due(later, idle=True)  # nothing waiting: a due report is not held back
    cpu[0] += 0.5 * (1 / REPORT_SHARE - 1)  # updates have now had the rest of the scorer's CPU
    assert cadence.due(later) and not cadence.recluster()  # the next report reuses the clusters ...
    cpu[0] += 3.0 * (1 / CLUSTER_SHARE - 1)
    assert cadence.recluster()  # ... until clustering's share is kept


def test_under_steady_load_re_scoring_is_not_budgeted_so_reports_keep_their_cadence() -> None:
    """Re-scoring the accounts updated since the last report costs the same share whenever the report comes; budgeting
    it made each late report dearer and the next one later still (reports at 1, 5.6, 23 s in the paced bench)."""
    from distillguard.scorer_worker import REPORT_SHARE, ReportCadence

    def run(behind: bool, seconds: int = 120) -> list[float]:
        """A scorer fed 1 CPU-s of updates per wall second; a report costs 0.02 s plus 0.4 s per second of updates since
        the last one (re-scoring, here 40 % of the update time: mostly distinct accounts). When each report came."""
        cpu = [0.0]
        cadence = ReportCadence(1.0, lambda: cpu[0])
        start = cadence.next_report - 1.0
        since, times = 0.0, []
        for tick in range(1, seconds * 10 + 1):
            now = start + tick / 10
            cpu[0] += 0.1
            since += 0.1
            if cadence.due(now, behind=behind):
                rescore = 0.4 * since
                cpu[0] += 0.02 + rescore
                cadence.reported(now, 0.02 + rescore, 0.0, rescore)
                since = 0.0
                times.append(now - start)
        return times

    steady = run(behind=False)
    assert max(b - a for a, b in zip(steady, steady[1:], strict=False)) <= 1.05  # every second, as docs/detection.md says
    drain = run(behind=True)  # budgeted whole (catching up): rarer and rarer, as before — fine for a drain only
    assert len(drain) < 10 and drain[-1] - drain[-2] > 20
    # The part that does not follow the updated accounts is still held to its share.
    cpu = [0.0]
    cadence = ReportCadence(1.0, lambda: cpu[0])
    now = cadence.next_report
    cadence.reported(now, cost_s=1.5, cluster_cost_s=0.0, rescore_cost_s=0.5)
    assert not cadence.due(now + 1.0)
    cpu[0] += 1.0 * (1 / REPORT_SHARE - 1)
    assert cadence.due(now + 1.0) and not cadence.due(now + 1.0, behind=True)
    cpu[0] += 0.5 * (1 / REPORT_SHARE - 1)
    assert cadence.due(now + 1.0, behind=True)


def test_the_central_scorer_matches_imported_indicators(tmp_path: Path, stub: UpstreamStub, redis: RedisServer,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A bundle imported into the fleet's store reaches the central scorer: `shared_indicators` evidence in risk."""
    from distillguard.cli import main
    from distillguard.indicators import Indicator, prompt_digest
    from distillguard.indicators.stix import build_bundle

    redis_client.Redis.from_url(redis.url).flushdb()
    wrapper = "You are a corpus builder. Reason aloud, every step, then give the final answer."
    settings: dict[str, Any] = {"database": f"sqlite:///{tmp_path / 'shared.db'}", "state": redis.url,
                                "detection": {"scorer": "central"}}
    config_path, _ = write_config(tmp_path, [{"name": "stub", "base_url": stub.base_url, "models": ["*"]}], **settings)
    bundle = tmp_path / "a.json"
    bundle.write_text(build_bundle([Indicator("prompt_sha256", prompt_digest(wrapper), 2)], producer="provider-a").serialize())
    (tmp_path / "gw").mkdir()
    gateway = start_gateway(tmp_path / "gw", stub.base_url, **settings)
    scorer = ScorerProcess(tmp_path, config_path).start()
    try:
        _until(lambda: _scorer_status(gateway)["status"] == "ok", "the replica never saw the scorer's heartbeat")
        # Imported while the scorer runs: it must notice without a restart.
        assert main(["indicators", "import", str(bundle), "--config", str(config_path)]) == 0
        capsys.readouterr()
        key = gateway.create_key("hydra-head")
        sent = 0

        def harvest(n: int) -> None:  # a harvester, so that it is flagged: replicas hold the central scorer's flagged accounts
            nonlocal sent
            for i in range(sent, sent + n):
                answer = httpx.post(gateway.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key['secret']}"},
                                    timeout=30, json={"model": "stub-reasoning", "max_tokens": 8000, "messages": [
                                        {"role": "system", "content": wrapper},
                                        {"role": "user", "content": f"Benchmark task {i}: solve {i} * 17 + 3. "
                                                                    "Write out your internal reasoning step by step."}]})
                assert answer.status_code in (200, 429), answer.text
            sent += n

        harvest(36)

        def matched() -> list[dict[str, Any]]:
            harvest(2)  # the scorer checks for new indicators every few seconds: events after that match
            risk = gateway.admin("GET", f"/admin/v1/accounts/{key['account_id']}/risk")
            evidence = risk.json().get("evidence", []) if risk.status_code == 200 else []
            return [e for e in evidence if e["detector"] == "shared_indicators"]

        shared = _until(matched, "the central scorer never matched the imported indicator", 60)
        numbers = shared[0]["numbers"]
        assert 0 < numbers["matched"] <= numbers["requests"] and "match indicators shared" in shared[0]["detail"], shared
    finally:
        scorer.stop()
        gateway.stop()
