"""The reference parts of README.md and docs/ checked against the code, both ways.

"Docs are claims": a configuration key, a command-line flag, an endpoint or a
metric named in the docs must exist, and the reference tables must list
everything that does. Each test names what it compared; when one fails,
either the code grew something the docs do not mention, or a page names
something that is not (or no longer) there.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from distillguard.cli import build_parser
from distillguard.config import Settings
from distillguard.gateway.openapi import build_openapi
from tests.gateway_fixtures import RunningGateway

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = {path.relative_to(ROOT).as_posix(): path.read_text() for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]}
GATEWAY_MD = PAGES["docs/gateway.md"]


# --- configuration keys -------------------------------------------------------------------------------------


def _settings_keys(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every key of the configuration as a dotted path (``upstreams[].timeout_s``) with its default."""
    for name, field in model.model_fields.items():
        path = prefix + name
        annotation = field.annotation
        nested = next((arg for arg in (annotation, *getattr(annotation, "__args__", ()))
                       if isinstance(arg, type) and issubclass(arg, BaseModel)), None)
        default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        yield path, default
        if nested is not None:
            yield from _settings_keys(nested, path + ("[]." if str(annotation).startswith("list") else "."))


def _documented_keys() -> dict[str, str]:
    """The configuration tables of docs/gateway.md: key path → its default cell.

    A table under a heading that names one section (``### `limits` ``) lists
    that section's keys by their short names; elsewhere keys are full paths.
    """
    section = gateway = GATEWAY_MD.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    keys: dict[str, str] = {}
    prefix = ""
    for line in gateway.splitlines():
        heading = re.match(r"### `([a-z_\[\]]+)`$", line)
        if heading:
            prefix = heading.group(1) + ("." if not heading.group(1).endswith("[]") else ".")
            continue
        if line.startswith("### "):
            prefix = ""
            continue
        row = re.match(r"\| `([a-z_.\[\]]+)` \| ([^|]*)\|", line)
        if row:
            key = row.group(1)
            keys[key if "." in key or not prefix else prefix + key] = row.group(2).strip()
    assert keys, f"no configuration table found in {section[:80]!r}"
    return keys


def _default_in_cell(cell: str) -> tuple[bool, Any]:
    """The value a default cell states, when it states one literally (`` `600` ``, `` `"text"` ``, `` `null` ``)."""
    literal = re.match(r"`([^`]*)`", cell)
    if not literal or not cell.startswith("`"):
        return False, None
    return True, yaml.safe_load(literal.group(1))


def test_every_configuration_key_is_in_gateway_md_with_its_default() -> None:
    """docs/README.md: gateway.md covers "every configuration key"; each table row names a real key and its default."""
    documented = _documented_keys()
    actual = dict(_settings_keys())
    undocumented = sorted(set(actual) - set(documented))
    unknown = sorted(set(documented) - set(actual))
    assert not undocumented, f"configuration keys missing from docs/gateway.md's tables: {undocumented}"
    assert not unknown, f"docs/gateway.md documents keys the configuration does not have: {unknown}"
    wrong = []
    for key, cell in documented.items():
        stated, value = _default_in_cell(cell)
        default = actual[key]
        if stated and default is not PydanticUndefined and value != default:
            wrong.append(f"{key}: docs say {value!r}, code has {default!r}")
    assert not wrong, "defaults in docs/gateway.md differ from config.py: " + "; ".join(wrong)


def test_section_keys_named_on_other_pages_exist() -> None:
    """Any `section.key` named in README.md or docs/ for a configuration section is a key of that section."""
    actual = {key.replace("[]", "") for key, _ in _settings_keys()}
    sections = {key for key in actual if "." not in key}
    # `attestation` and `watermark` are also event objects: `attestation.tz` is an event field (docs/events.md)
    event_fields = set(re.findall(r'"([a-z_]+)":', PAGES["docs/events.md"])) | set(
        re.findall(r"^\| `([a-z_]+)` \|", PAGES["docs/events.md"], re.MULTILINE))
    missing = set()
    for page, text in PAGES.items():
        for match in re.finditer(r"`((?:" + "|".join(sorted(sections)) + r")\.[a-z_.]+)(?::[^`]*)?`", text):
            key = match.group(1).rstrip(".")
            event_field = key.split(".")[0] in ("attestation", "watermark") and key.split(".")[-1] in event_fields
            if key not in actual and not event_field and not key.endswith(".py"):
                missing.add(f"{page}: {key}")
    assert not missing, f"configuration keys named in the docs that do not exist: {sorted(missing)}"


# --- the command line ---------------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _leaf_commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    children = _subcommands(parser)
    if not children:
        yield words
    for name, child in children.items():
        yield from _leaf_commands(child, (*words, name))


COMMAND = re.compile(r"(?:^|[`$(]|^\s*(?:\$ )?)distillguard((?: [a-z][a-z0-9-]*)+)([^`\n|#;&)]*)", re.MULTILINE)


def _documented_commands() -> Iterator[tuple[str, tuple[str, ...], list[str]]]:
    """(page, command words, flags) for each ``distillguard …`` command line in README.md and docs/."""
    for page, text in PAGES.items():
        for match in COMMAND.finditer(text):
            words = tuple(match.group(1).split())
            flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", match.group(2))
            yield page, words, flags


def test_every_command_and_flag_in_the_docs_exists() -> None:
    """Each `distillguard …` command and each `--flag` written after it in README.md or docs/ is in the parser."""
    root = build_parser()
    problems = []
    seen = 0
    for page, words, flags in _documented_commands():
        parser, used = root, []
        for word in words:
            children = _subcommands(parser)
            if word not in children:
                break
            parser, used = children[word], [*used, word]
        if not used:
            if words[0] not in ("is", "and", "to", "for", "itself", "with", "has", "in", "does"):  # prose ("distillguard is …")
                problems.append(f"{page}: `distillguard {' '.join(words)}`: no such command")
            continue
        seen += 1
        if _subcommands(parser):
            continue  # a group named in prose ("distillguard admin COMMAND"); its leaves are checked elsewhere
        unknown = [flag for flag in flags if flag not in _options(parser)]
        if unknown:
            problems.append(f"{page}: `distillguard {' '.join(used)}` has no {', '.join(unknown)}")
    assert seen > 50, f"only {seen} command lines found: did the pattern stop matching?"
    assert not problems, "\n".join(problems)


def test_every_command_is_in_the_docs_command_table() -> None:
    """docs/README.md's "Commands" table names every command and subcommand, and each of its flags."""
    table = PAGES["docs/README.md"].split("## Commands", 1)[1]
    missing = []
    for words in _leaf_commands(build_parser()):
        if words[0] == "admin":  # one row: `distillguard admin COMMAND`; docs/console.md lists its subcommands
            continue
        leaf = build_parser()
        for word in words:
            leaf = _subcommands(leaf)[word]
        rows = [line for line in table.splitlines() if re.search(r"distillguard " + words[0] + r"\b", line)]
        text = " ".join(rows)
        pattern = r"\b" + re.escape(words[-1]) + r"\b" if len(words) > 1 else r"distillguard " + re.escape(words[0]) + r"\b"
        if not rows or not re.search(pattern, text):
            missing.append(" ".join(words))
            continue
        hidden = {action.option_strings[0] for action in leaf._actions if action.help == argparse.SUPPRESS and action.option_strings}
        for flag in sorted(_options(leaf) - {"-h", "--help", "--config"} - hidden):
            if flag not in text:
                missing.append(f"{' '.join(words)} {flag}")
    assert not missing, f"docs/README.md's command table lacks: {missing}"


def test_admin_subcommands_are_in_console_md() -> None:
    """docs/console.md's `distillguard admin` table has a row for every subcommand, naming each of its flags."""
    console = PAGES["docs/console.md"].split("## `distillguard admin`", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in console.splitlines():
        first = re.match(r"\| `([^`]*)` \|", line)
        if first:
            words = first.group(1).replace("\\|", "|").split(" [")[0].split()
            for name in words[0].split("|"):  # `block\|unblock\|throttle\|degrade ACCOUNT…`
                rows[" ".join([name, *[w for w in words[1:] if w.islower()]])] = first.group(1)
    admin = _subcommands(build_parser())["admin"]
    missing = []
    for words in _leaf_commands(admin):
        leaf = admin
        for word in words:
            leaf = _subcommands(leaf)[word]
        row = rows.get(" ".join(words))
        if row is None:
            missing.append(" ".join(words))
            continue
        missing += [f"{' '.join(words)} {flag}" for flag in sorted(_options(leaf) - {"-h", "--help", "--config", "--url", "--token", "--json"})
                    if flag not in row]
    assert not missing, f"docs/console.md's `distillguard admin` table lacks: {missing}"


DESIGN_COMMANDS = [  # DESIGN §3 (a contract tested from outside): each synopsis, written out, parses as written
    "serve --config gw.yaml", "demo", "demo --serve", "demo --no-wait", "accounts create alice --org acme --json",
    "accounts list --json", "keys create acct_1 --json", "keys revoke key_1",
    "scan a.jsonl b.jsonl.gz - --out r.json --accounts acc.jsonl --format table --fail-on medium",
    "scan a.jsonl --format json --fail-on high", "accounts export", "events import e.jsonl", "scorer --config gw.yaml",
    "admin --url http://gw:8700 --token T risk acct_1", "admin flagged", "admin review list", "admin block acct_1",
    "admin unblock cl_1", "admin throttle acct_1", "admin degrade acct_1", "admin keys list", "admin accounts show acct_1",
    "admin limits set acct_1 --requests-per-min 60", "client show", "client proxy --listen 127.0.0.1:8710 --to http://gw",
    "canary probe --base-url http://x/v1 --model m", "indicators export", "indicators import b.json",
    "simulate --scenario default --seed 1 --out e.jsonl.gz --labels l.json", "eval --events e.jsonl.gz --labels l.json",
    "watermark detect --text-file f.txt --key-id a --key-id b", "accounts list --config gw.yaml",
]


@pytest.mark.parametrize("line", DESIGN_COMMANDS)
def test_design_command_synopses_parse(line: str) -> None:
    """Every command line of DESIGN §3 is accepted by the parser as written (parsed only, not run)."""
    args = build_parser().parse_args(line.split())
    assert args.handler
    if line.startswith("admin --url"):  # the options before the command reach the handler
        assert (args.url, args.token) == ("http://gw:8700", "T")


# --- endpoints ----------------------------------------------------------------------------------------------

ROUTE = re.compile(r"`(?:(GET|POST|PUT|DELETE)` or `)?(GET|POST|PUT|DELETE) (/(?:v1|admin/v1|healthz|readyz|metrics|openapi\.json)[^\s`?]*)")


def _normalise(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path.rstrip("/"))


def _openapi_routes() -> set[tuple[str, str]]:
    return {(method.upper(), _normalise(path)) for path, item in build_openapi()["paths"].items()
            for method in item if method in ("get", "post", "put", "delete")}


def test_every_endpoint_in_the_docs_is_in_the_openapi_document() -> None:
    """A `METHOD /path` of the gateway named in README.md or docs/ (not the demo model's page) is a route of GET /openapi.json."""
    routes = _openapi_routes()
    not_routes = {("POST", "/healthz")}  # gateway.md's example of a 405: a method the path does not have
    assert not routes & not_routes
    unknown = set()
    for page, text in PAGES.items():
        if page == "docs/demo-model.md":
            continue
        for match in ROUTE.finditer(text):
            for method in filter(None, match.group(1, 2)):
                if (method, _normalise(match.group(3))) not in routes | not_routes:
                    unknown.add(f"{page}: {method} {match.group(3)}")
    assert not unknown, f"endpoints in the docs that the gateway does not serve: {sorted(unknown)}"


def test_every_route_is_in_gateway_md() -> None:
    """docs/gateway.md's endpoint and admin tables name every route of the OpenAPI document."""
    documented = {(method, _normalise(match.group(3))) for match in ROUTE.finditer(GATEWAY_MD)
                  for method in filter(None, match.group(1, 2))}
    missing = sorted(_openapi_routes() - documented)
    assert not missing, f"routes missing from docs/gateway.md: {missing}"


# --- metrics ------------------------------------------------------------------------------------------------


def _documented_metrics() -> dict[str, str]:
    table = GATEWAY_MD.split("| metric | type | labels | meaning |", 1)[1].split("\n\n", 1)[0]
    metrics = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            for name in re.findall(r"`([a-z_]+)`", cells[0]):
                metrics[name] = cells[1]
    return metrics


def test_metrics_table_matches_what_metrics_exports(gateway: RunningGateway) -> None:
    """docs/gateway.md's metrics table lists exactly what a running gateway's GET /metrics declares, with its type."""
    text = httpx.get(gateway.root_url + "/metrics", timeout=10).text
    exported = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    documented = _documented_metrics()
    assert len(exported) > 20, text[:500]
    assert documented == exported, (f"only in the docs: {sorted(set(documented) - set(exported))}; "
                                    f"only in /metrics: {sorted(set(exported) - set(documented))}; "
                                    f"type differs: {sorted(k for k in documented.keys() & exported.keys() if documented[k] != exported[k])}")


@pytest.mark.parametrize("page", [page for page in PAGES if page != "docs/gateway.md"])
def test_metrics_named_on_other_pages_exist(page: str) -> None:
    """A `distillguard_…` or `dg_…` metric named elsewhere is one of gateway.md's metrics."""
    documented = set(_documented_metrics())
    named = {name for name in re.findall(r"`((?:distillguard|dg)_[a-z_]+)`", PAGES[page])
             if not name.startswith(("distillguard_scorer_*",))}
    not_metrics = {"dg_console"}  # the console's session cookie (docs/console.md)
    unknown = sorted(name for name in named - not_metrics - documented if not name.endswith("_"))
    assert not unknown, f"{page} names metrics that are not exported: {unknown}"


# --- the map of the code ------------------------------------------------------------------------------------


def test_every_package_and_top_level_module_is_in_architecture_md() -> None:
    """docs/architecture.md's package table names every package and top-level module of src/distillguard, and nothing else."""
    source = ROOT / "src" / "distillguard"
    packages = {f"{p.name}/" for p in source.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in source.glob("*.py") if p.stem not in ("__init__", "__main__")}
    table = PAGES["docs/architecture.md"].split("## Packages", 1)[1].split("\n## ", 1)[0]
    documented = {name.removesuffix(".py") for name in re.findall(r"^\| `([\w/.]+)` \|", table, re.MULTILINE)}
    actual = packages | modules  # a module may be written `events` or `admin_cli.py`
    assert documented == actual, (f"missing from the table: {sorted(actual - documented)}; "
                                  f"in the table but not in src/distillguard: {sorted(documented - actual)}")


def test_every_gateway_module_is_named_in_architecture_md() -> None:
    """docs/architecture.md says what each module of gateway/ does ("The gateway's modules, one job each")."""
    text = PAGES["docs/architecture.md"].split("The gateway's modules, one job each", 1)[1].split("\n\n", 1)[0]
    missing = sorted(p.name for p in (ROOT / "src" / "distillguard" / "gateway").glob("*.py")
                     if p.name != "__init__.py" and f"`{p.name}`" not in text)
    assert not missing, f"gateway modules architecture.md does not describe: {missing}"


def test_every_table_and_column_is_in_store_md() -> None:
    """docs/store.md's schema section names every table of store/schema.py with each of its columns."""
    from sqlalchemy import MetaData

    from distillguard.store import schema

    metadata = next(value for value in vars(schema).values() if isinstance(value, MetaData))
    text = PAGES["docs/store.md"].split("## Schema", 1)[1].split("\n## ", 1)[0]
    missing = []
    for table in metadata.sorted_tables:
        if f"`{table.name}`" not in text:
            missing.append(table.name)
            continue
        # the table's own section (### `name`) or its row in the table of small tables
        own = re.search(r"### `" + table.name + r"`\n(.*?)(?=\n### |\Z)", text, re.S)
        row = re.search(r"^\| `" + table.name + r"` \|.*$", text, re.M)
        where = own.group(1) if own else row.group(0) if row else ""
        missing += [f"{table.name}.{column.name}" for column in table.columns if f"`{column.name}`" not in where]
    assert not missing, f"docs/store.md does not describe: {missing}"


# --- the event log ------------------------------------------------------------------------------------------


def _field_paths(value: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield prefix + key
            yield from _field_paths(inner, prefix + key + ".")
    elif isinstance(value, list):
        for item in value:
            yield from _field_paths(item, prefix)


def test_every_field_of_real_events_is_in_events_md(gateway: RunningGateway) -> None:
    """docs/events.md describes every field the gateway writes: answered, streamed, refused and Anthropic requests."""
    key = gateway.create_key("docs-events")
    auth = {"Authorization": f"Bearer {key['secret']}"}
    chat = {"model": "stub-1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as client:
        ids = [client.post(gateway.base_url + "/chat/completions", headers=auth, json=chat).headers["x-request-id"],
               client.post(gateway.base_url + "/chat/completions", headers=auth, json={**chat, "stream": True}).headers["x-request-id"],
               client.post(gateway.root_url + "/v1/messages", headers={"x-api-key": key["secret"]},
                           json={"model": "stub-1", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}).headers["x-request-id"],
               client.post(gateway.base_url + "/chat/completions", headers={"Authorization": "Bearer sk-dg-wrong"}, json=chat)
               .headers["x-request-id"]]
    events = [gateway.event(request_id) for request_id in ids]
    for event in events:  # DESIGN §4: writers always write these
        assert {"v", "ts", "request_id", "account_id", "endpoint", "request", "response"} <= set(event), event
    text = PAGES["docs/events.md"]


    def described(path: str) -> bool:  # a field table row names `field`, or `parent.field` (`geo.country`, `params.n`)
        parts = path.split(".")
        return f"`{parts[-1]}`" in text or f"`{'.'.join(parts[-2:])}`" in text or f"`{parts[-1]}." in text

    missing = sorted({path for event in events for path in _field_paths(event) if not described(path)})
    assert not missing, f"event fields docs/events.md does not describe: {missing}"


def test_health_and_readiness_answer_as_gateway_md_says(gateway: RunningGateway) -> None:
    """gateway.md, "Health, readiness, metrics": the shapes of /healthz and /readyz (scorer: status, last_report_age_s, backlog)."""
    assert "`200 {\"status\":\"ok\"}`" in GATEWAY_MD
    health = httpx.get(gateway.root_url + "/healthz", timeout=10)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = httpx.get(gateway.root_url + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert set(body) == {"status", "problems", "keys_loaded", "scorer"} and body["status"] == "ready" and body["problems"] == []
    assert set(body["scorer"]) == {"status", "last_report_age_s", "backlog"}
    assert body["scorer"]["status"] in ("ok", "stale", "down", "off")


# --- dependencies -------------------------------------------------------------------------------------------


def test_every_dependency_has_a_row_in_the_readme() -> None:
    """README.md's "Dependencies and why" table names every dependency and extra of pyproject.toml."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requirements}  # type: ignore[union-attr]
    table = PAGES["README.md"].split("## Dependencies and why", 1)[1]
    first_cells = " ".join(line.split("|")[1].lower() for line in table.splitlines() if line.startswith("| "))
    missing = sorted(name for name in names if not re.search(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", first_cells))
    assert not missing, f"dependencies without a row in README.md: {missing}"


def test_every_page_is_in_the_docs_index() -> None:
    """docs/README.md's table links every page of docs/ (and only pages that exist)."""
    index = PAGES["docs/README.md"]
    linked = set(re.findall(r"\]\(([\w-]+\.(?:md|yaml))\)", index))
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert pages <= linked, f"pages missing from docs/README.md: {sorted(pages - linked)}"
    assert all((DOCS / name).exists() for name in linked), sorted(linked)


def test_python_imports_in_the_docs_resolve() -> None:
    """Every `from distillguard… import …` (and `import distillguard…`) written in README.md or docs/ names what exists."""
    import importlib

    problems = []
    seen = 0
    for page, text in PAGES.items():
        for module, names in re.findall(r"^\s*from (distillguard[\w.]*) import ([\w, ]+)$", text, re.MULTILINE):
            seen += 1
            try:
                imported = importlib.import_module(module)
            except ImportError as exc:
                problems.append(f"{page}: {module}: {exc}")
                continue
            problems += [f"{page}: {module}.{name}" for name in (n.strip() for n in names.split(",")) if name and not hasattr(imported, name)]
    assert seen >= 10, seen
    assert not problems, problems


def test_files_and_tests_named_in_the_docs_exist() -> None:
    """A repository path (`src/…`, `tests/…`, `bench/…`, `deploy/…`, `tools/…`, `.ci/…`) or `tests/x.py::test_y` named in the docs exists."""
    missing = []
    for page, text in PAGES.items():
        for path, test in re.findall(r"(?<![\w/.])((?:src|tests|bench|deploy|tools|\.ci)/[\w./-]*\w)(?:::(\w+))?", text):
            target = ROOT / path
            if not target.exists():
                missing.append(f"{page}: {path}")
            elif test and f"def {test}(" not in target.read_text():
                missing.append(f"{page}: {path}::{test}")
    assert not missing, missing


def test_commands_that_read_no_settings_are_the_ones_docs_readme_names() -> None:
    """docs/README.md names the commands that only check --config (reads_settings=False in cli.py), all of them."""
    root = build_parser()
    actual = set()
    for words in _leaf_commands(root):
        leaf = root
        for word in words:
            leaf = _subcommands(leaf)[word]
        if leaf.get_default("reads_settings") is False:
            actual.add(" ".join(words))
    sentence = re.search(r"Every command accepts `--config FILE`[^;]*;(.*?)read no settings", PAGES["docs/README.md"], re.S)
    assert sentence, "docs/README.md no longer says which commands read no settings"
    named = set(re.findall(r"`([a-z -]+)`", sentence.group(1)))
    assert named == actual, f"docs/README.md names {sorted(named)}; cli.py: {sorted(actual)}"
