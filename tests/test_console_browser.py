"""The console in a real browser: Playwright driving Debian's chromium against a real gateway with a flagged hydra.

A test per page and per action. The browser is Debian's ``chromium`` package
(``.ci/run`` installs it); Playwright never downloads one. Skipped, with the
reason, only when chromium or the playwright package is not installed.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.console_fixtures import VIEWER_TOKEN, Population, populate
from tests.upstream_stub import UpstreamStub

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip package playwright is not installed (dev extra)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def pop(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[Population]:
    population = populate(tmp_path_factory.mktemp("console"), stub.base_url)
    yield population
    population.gateway.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def _signed_in(browser: Any, pop: Population, token: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(pop.gateway.root_url + "/admin/ui/")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Overview')")
    return page


@pytest.fixture(scope="module")
def admin(browser: Any, pop: Population) -> Iterator[Any]:
    page = _signed_in(browser, pop, pop.gateway.admin_token)
    yield page
    page.context.close()


def submit(page: Any, target: Any) -> None:
    """Click a submit button (a selector or a locator) and wait for the page the form leads to."""
    with page.expect_navigation(timeout=60_000):
        (page.locator(target) if isinstance(target, str) else target).click()


def ui(pop: Population, path: str = "") -> str:
    return f"{pop.gateway.root_url}/admin/ui/{path}"


def test_sign_in_sets_a_strict_httponly_cookie_and_a_wrong_token_is_refused(browser: Any, pop: Population) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(ui(pop, "accounts"))
    assert page.url.endswith("/admin/ui/login")
    page.fill("input[name=token]", "not-the-token")
    submit(page, "button[type=submit]")
    assert "neither the admin nor the viewer token" in page.inner_text("[role=alert]")
    page.fill("input[name=token]", pop.gateway.admin_token)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Overview')")
    cookie = next(c for c in context.cookies() if c["name"] == "dg_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin/ui"
    submit(page, "text=Sign out")
    assert page.url.endswith("/admin/ui/login")
    page.goto(ui(pop))
    assert page.url.endswith("/admin/ui/login")
    context.close()


def test_overview_counts_agree_with_its_lists(admin: Any, pop: Population) -> None:
    admin.goto(ui(pop))
    flagged = int(admin.inner_text("#count-flagged"))
    assert flagged == admin.locator("#flagged-accounts tbody tr").count() >= 5
    assert int(admin.inner_text("#count-clusters")) == admin.locator("#flagged-clusters li").count() == 1
    assert int(admin.inner_text("#count-accounts")) == 7
    assert int(admin.inner_text("#count-reviews")) == 2  # the hydra's one item and the lone harvester's
    assert pop.cluster_id in admin.inner_text("#flagged-clusters")
    assert admin.locator("svg.chart").count() == 2


def test_accounts_search_filter_and_sort(admin: Any, pop: Population) -> None:
    admin.goto(ui(pop, "accounts?q=hydra"))
    names = admin.locator("#accounts tbody tr td:first-child a").all_inner_texts()
    assert sorted(names) == ["hydra-0", "hydra-1", "hydra-2", "hydra-3"]
    admin.goto(ui(pop, "accounts?q=ACME"))  # by org, any case
    assert admin.locator("#accounts tbody tr").count() == 3
    admin.goto(ui(pop, "accounts?sort=newest"))
    assert admin.inner_text("#result-count").startswith("7 account(s)")
    admin.goto(ui(pop, "accounts?status=active"))
    active = admin.locator("#accounts tbody tr td:first-child a").all_inner_texts()
    assert {"alice", "bob"} <= set(active) and not any(name.startswith("hydra") for name in active)
    admin.goto(ui(pop, "accounts?q=hydra-0"))
    acting = admin.locator("#accounts tbody tr .status").first.inner_text()  # what the policy does to the hydra now
    assert acting in ("flagged", "degraded", "throttled")
    admin.goto(ui(pop, f"accounts?status={acting}&sort=newest"))
    rows = admin.locator("#accounts tbody tr").all_inner_texts()
    assert any("hydra-0" in row for row in rows) and all(acting in row for row in rows)
    admin.goto(ui(pop, "accounts"))
    first = admin.locator("#accounts tbody tr").first.inner_text()
    assert "medium" in first or "high" in first  # sorted by risk: a flagged account first
    admin.select_option("select[name=risk]", "low")
    submit(admin, "form.filters button")
    rows = admin.locator("#accounts tbody tr").all_inner_texts()
    assert rows and all("low" in row for row in rows) and not any("hydra" in row for row in rows)


def test_account_page_shows_evidence_networks_prompts_keys(admin: Any, pop: Population) -> None:
    account = pop.hydra[0]["account_id"]
    admin.goto(ui(pop, f"accounts/{account}"))
    text = admin.inner_text("main")
    assert "hydra-0" in text and "cot_elicitation" in text and "of 36 prompts ask for step-by-step" in text
    assert "198.51.100.0/24" in text and pop.hydra[0]["key_id"] in admin.inner_text("#keys")
    assert "Benchmark task" in admin.inner_text("#prompts") and "prompt_mode: keep" in text
    assert pop.cluster_id in text and "account.create" in admin.inner_text("#audit")


def test_account_actions_block_then_unblock_with_a_note(admin: Any, pop: Population) -> None:
    person = pop.people[0]
    admin.goto(ui(pop, f"accounts/{person['account_id']}"))
    admin.select_option("#action-form select[name=action]", "block")
    admin.fill("#action-form input[name=note]", "card chargeback")
    submit(admin, "#action-form button")
    assert "block applied" in admin.inner_text(".flash")
    assert "blocked" in admin.inner_text("#account-status") and "card chargeback" in admin.inner_text("#audit")
    blocked = httpx.post(pop.gateway.base_url + "/chat/completions", headers={"authorization": f"Bearer {person['secret']}"},
                         json={"model": "stub-1", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert blocked.status_code == 403
    admin.select_option("#action-form select[name=action]", "clear")
    admin.fill("#action-form input[name=note]", "resolved")
    submit(admin, "#action-form button")
    assert "active" in admin.inner_text("#account-status")


def test_account_limits_change(admin: Any, pop: Population) -> None:
    person = pop.people[1]
    admin.goto(ui(pop, f"accounts/{person['account_id']}"))
    admin.fill("#limits-form input[name=requests_per_min]", "42")
    submit(admin, "#limits-form button")
    assert "Limits saved" in admin.inner_text(".flash")
    assert admin.input_value("#limits-form input[name=requests_per_min]") == "42"
    assert pop.gateway.admin("GET", f"/admin/v1/accounts/{person['account_id']}").json()["limits"] == {"requests_per_min": 42}
    admin.fill("#limits-form input[name=requests_per_min]", "lots")
    submit(admin, "#limits-form button")
    assert "must be a whole number" in admin.inner_text(".flash")


def test_clusters_page_draws_members_and_acts_on_the_whole_cluster(admin: Any, pop: Population) -> None:
    admin.goto(ui(pop, "clusters"))
    section = admin.locator(f"section#{pop.cluster_id}")
    assert section.locator("svg.graph circle").count() == 4
    shared = next(c for c in pop.gateway.admin("GET", "/admin/v1/clusters").json()["data"] if c["cluster_id"] == pop.cluster_id)["shared"]
    assert shared and all(item in section.inner_text() for item in shared)
    section.locator("select[name=action]").select_option("throttle")
    section.locator("input[name=note]").fill("slow the hydra down")
    submit(admin, section.locator("button"))
    assert "throttle applied to the 4 accounts" in admin.inner_text(".flash")
    statuses = admin.locator(f"section#{pop.cluster_id} table.members .status").all_inner_texts()
    assert statuses == ["throttled"] * 4


def test_review_queue_has_one_item_per_cluster_and_dismiss_lifts_what_it_caused(admin: Any, pop: Population) -> None:
    admin.goto(ui(pop, "review"))
    items = admin.locator("article.review")
    assert items.count() == 2
    cluster_item = admin.locator("article.review", has_text=f"cluster {pop.cluster_id}")
    assert cluster_item.count() == 1 and "hydra-0" in cluster_item.inner_text()
    harvester = pop.harvester["account_id"]
    item = admin.locator("article.review", has_text=harvester)
    item.locator("input[name=note]").fill("a teacher writing worked examples")
    submit(admin, item.locator("button[value=dismiss]"))
    assert "dismissed; allow applied to 1 account(s)" in admin.inner_text(".flash")
    admin.goto(ui(pop, f"accounts/{harvester}"))
    assert "allow" in admin.inner_text("#account-status") or "active" in admin.inner_text("#account-status")
    admin.goto(ui(pop, "review"))
    cluster_item = admin.locator("article.review", has_text=f"cluster {pop.cluster_id}")
    cluster_item.locator("select[name=action]").select_option("block")
    cluster_item.locator("input[name=note]").fill("same template, same fingerprint")
    submit(admin, cluster_item.locator("button[value=confirm]"))
    assert "confirmed; block applied to 4 account(s)" in admin.inner_text(".flash")
    admin.goto(ui(pop, "review?status=all"))
    assert "same template, same fingerprint" in admin.inner_text("main")


def test_audit_log_has_human_timestamps_and_the_console_actor(admin: Any, pop: Population) -> None:
    admin.goto(ui(pop, "audit"))
    first = admin.locator("#audit-log tbody tr").first.inner_text()
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", first)
    assert "console" in admin.inner_text("#audit-log")
    assert not re.search(r"\b1[78]\d{8}\.\d+", admin.inner_text("#audit-log"))  # no raw float timestamps


def test_watermark_check_gives_a_verdict_per_key(admin: Any, pop: Population) -> None:
    admin.goto(ui(pop, "watermark"))
    admin.fill("textarea[name=text]", "The answer is forty-two. " * 20)
    admin.fill("input[name=key_ids]", "global org:acme")
    submit(admin, "#watermark-form button")
    rows = admin.locator("#watermark-results tr:has(td)").all_inner_texts()
    assert rows, admin.inner_text("main")
    assert any(row.startswith("global") for row in rows) and any(row.startswith("org:acme") for row in rows)
    assert "tokens scored" in admin.inner_text("main") and "Too short to decide" in admin.inner_text("main")
    admin.fill("input[name=key_ids]", "acct_x")
    submit(admin, "#watermark-form button")
    assert "expected 'global'" in admin.inner_text("[role=alert]")


def test_events_search_by_account_pages_newest_first(admin: Any, pop: Population) -> None:
    account = pop.people[0]["account_id"]
    admin.goto(ui(pop, "events"))
    admin.fill("input[name=account]", account)
    submit(admin, "form.filters button")
    rows = admin.locator("#events tr:has(td)").all_inner_texts()
    assert len(rows) >= 36  # its 36 requests (and any made by earlier tests)
    assert all(account in row for row in rows)
    admin.goto(ui(pop, "events"))
    assert admin.locator("#events tr:has(td)").count() == 50 and admin.locator("a[rel=next]").count() == 1
    admin.click("a[rel=next]")
    assert admin.locator("#events tr:has(td)").count() > 0


def test_viewer_reads_but_cannot_act_and_a_post_without_csrf_is_refused(browser: Any, pop: Population) -> None:
    page = _signed_in(browser, pop, VIEWER_TOKEN)
    assert "read-only" in page.inner_text("header")
    page.goto(ui(pop, f"accounts/{pop.people[1]['account_id']}"))
    assert page.locator("#action-form").count() == 0
    csrf = page.input_value("#limits-form input[name=csrf]")
    refused = page.request.post(ui(pop, f"accounts/{pop.people[1]['account_id']}/action"),
                                form={"csrf": csrf, "action": "block", "note": "viewer tries"}, max_redirects=0)
    assert refused.status == 403 and "read-only" in refused.text()
    page.context.close()
    admin_page = _signed_in(browser, pop, pop.gateway.admin_token)
    forged = admin_page.request.post(ui(pop, f"accounts/{pop.people[1]['account_id']}/action"),
                                     form={"action": "block", "note": "no token"}, max_redirects=0)
    assert forged.status == 403 and "CSRF" in forged.text()
    assert pop.gateway.admin("GET", "/admin/v1/audit?limit=200").json()["data"][0]["detail"].get("reason") != "no token"
    admin_page.context.close()
