"""Attestation end to end through the real gateway, forgeries, network signals, regions, privacy."""

from __future__ import annotations

import base64
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.client import Identity, attesting_client, sign_request
from distillguard.config import Settings
from distillguard.exceptions import ConfigError, UsageError
from distillguard.signals import AttestationVerifier, EnrollmentError, SignalCollector
from distillguard.signals.attestation import OTHER_ACCOUNT
from distillguard.signals.consistency import consistency_signals, countries_for_timezone, primary_country
from distillguard.signals.installs import InstallKeyCache
from distillguard.signals.network import client_ip, forwarded_scheme, header_fingerprint, protect_ip
from distillguard.signals.protocol import (
    SIGNALS_HEADER,
    TAG,
    api_key_digest,
    decode_signals,
    encode_signals,
    enrollment_message,
)
from distillguard.store.registry import InstallKey, Registry
from tests.gateway_fixtures import RunningGateway, start_gateway

URL = "http://gw.test/v1/chat/completions"


@pytest.fixture()
def identity(tmp_path: Path) -> Identity:
    return Identity.load_or_create(tmp_path / "client")


@pytest.fixture()
def verifier(identity: Identity) -> AttestationVerifier:
    return AttestationVerifier({identity.install_id: identity.public_key_b64}, clock_skew_s=60)


def signed(identity: Identity, body: bytes = b'{"model": "m"}', url: str = URL, overrides: dict | None = None) -> httpx.Request:
    request = httpx.Request("POST", url, content=body, headers={"Content-Type": "application/json"})
    sign_request(request, identity, overrides)
    return request


def verify(verifier: AttestationVerifier, request: httpx.Request, *, url: str | None = None, body: bytes | None = None) -> dict | None:
    return verifier.verify(request.method, url or str(request.url), list(request.headers.items()), request.content if body is None else body)


def verify_as(verifier: AttestationVerifier, request: httpx.Request, *, account_id: str) -> dict:
    result = verifier.verify(request.method, str(request.url), list(request.headers.items()), request.content, account_id=account_id)
    assert result is not None
    return result


def test_valid_attestation_carries_the_signals(identity: Identity, verifier: AttestationVerifier) -> None:
    result = verify(verifier, signed(identity, overrides={"tz": "Europe/Berlin", "utc_offset_min": 60, "locale": "de_DE"}))
    assert result is not None and result["status"] == "valid"
    assert (result["install_id"], result["tz"], result["utc_offset_min"], result["locale"]) == (identity.install_id, "Europe/Berlin", 60, "de_DE")


def test_no_attestation_is_none(verifier: AttestationVerifier) -> None:
    assert verifier.verify("POST", URL, [("content-type", "application/json")], b"{}") is None


def test_tampered_body_path_and_signals_are_invalid(identity: Identity, verifier: AttestationVerifier) -> None:
    assert verify(verifier, signed(identity), body=b'{"model": "other"}')["status"] == "invalid"  # type: ignore[index]
    assert verify(verifier, signed(identity), url="http://gw.test/v1/embeddings")["status"] == "invalid"  # type: ignore[index]
    request = signed(identity)
    claims = decode_signals(request.headers[SIGNALS_HEADER])
    claims["tz"] = "Asia/Tokyo"
    request.headers[SIGNALS_HEADER] = encode_signals(claims)
    assert verify(verifier, request)["status"] == "invalid"  # type: ignore[index]


def test_replay_is_detected(identity: Identity, verifier: AttestationVerifier) -> None:
    request = signed(identity)
    assert verify(verifier, request)["status"] == "valid"  # type: ignore[index]
    assert verify(verifier, copy.deepcopy(request))["status"] == "replayed"  # type: ignore[index]


def test_expired_signature(identity: Identity, monkeypatch: pytest.MonkeyPatch) -> None:
    request = signed(identity)
    strict = AttestationVerifier({identity.install_id: identity.public_key_b64}, clock_skew_s=1)
    real_time = time.time
    import datetime as dt

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return dt.datetime.fromtimestamp(real_time() + 3600, tz)

    monkeypatch.setattr("http_message_signatures.signatures.datetime.datetime", Later)
    monkeypatch.setattr("distillguard.signals.fast_verify._now", lambda: real_time() + 3600)  # the fast path's clock too
    assert verify(strict, request)["status"] == "expired"  # type: ignore[index]


def test_wrong_key_and_unknown_install(identity: Identity, tmp_path: Path) -> None:
    other = Identity.load_or_create(tmp_path / "other")
    wrong = AttestationVerifier({identity.install_id: other.public_key_b64})
    assert verify(wrong, signed(identity))["status"] == "invalid"  # type: ignore[index]
    empty = AttestationVerifier({})
    assert verify(empty, signed(identity))["status"] == "missing_key"  # type: ignore[index]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["signature-input", "signature", "dg-client-signals", "content-digest"]),
                       st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80), min_size=1))
def test_garbage_headers_never_raise(headers: dict[str, str]) -> None:
    verifier = AttestationVerifier({"inst_x": base64.urlsafe_b64encode(b"\x01" * 32).decode().rstrip("=")})
    result = verifier.verify("POST", URL, list(headers.items()), b"{}")
    assert result is None or result["status"] in {"invalid", "expired", "replayed", "missing_key"}


def test_trusted_proxy_hops() -> None:
    import ipaddress

    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    headers = {"x-forwarded-for": "203.0.113.9, 198.51.100.7, 10.1.1.1"}
    assert client_ip("10.0.0.2", headers, trusted) == "198.51.100.7"
    assert client_ip("198.51.100.200", headers, trusted) == "198.51.100.200"  # untrusted peer: header ignored
    assert client_ip("10.0.0.2", {"forwarded": 'for="[2001:db8::1]";proto=https'}, trusted) == "2001:db8::1"
    assert client_ip("10.0.0.2", headers, []) == "10.0.0.2"


def test_geoip_from_mmdb_files_and_consistency(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    country = MMDBWriter(ip_version=4, database_type="GeoIP2-Country")
    country.insert_network(IPSet(["198.51.100.0/24"]), {"country": {"iso_code": "JP"}})
    country.to_db_file(str(tmp_path / "country.mmdb"))
    asn = MMDBWriter(ip_version=4, database_type="GeoLite2-ASN")
    asn.insert_network(IPSet(["198.51.100.0/24"]), {"autonomous_system_number": 16509, "autonomous_system_organization": "Cloud"})
    asn.to_db_file(str(tmp_path / "asn.mmdb"))
    settings_ = Settings(network={"geoip_country_db": str(tmp_path / "country.mmdb"), "geoip_asn_db": str(tmp_path / "asn.mmdb"),
                                  "trusted_proxies": ["127.0.0.1/32"], "deny_countries": ["JP"]})
    collector = SignalCollector(settings_)
    result = collector.collect("POST", "/v1/chat/completions", [(b"host", b"gw"), (b"x-forwarded-for", b"198.51.100.4")], "127.0.0.1", b"{}")
    assert result.client["ip"] == "198.51.100.4"
    assert result.client["geo"] == {"country": "JP", "asn": 16509, "hosting": True}
    assert result.region_denied is not None and "not offered in your region" in result.region_denied
    assert "DE" in countries_for_timezone("Europe/Berlin")
    attested = {"status": "valid", "tz": "Europe/Berlin", "locale": "de_DE", "proxy": False}
    names = {s["name"] for s in consistency_signals(attested, {"country": "JP", "asn": 16509, "hosting": True}, "ja-JP,ja;q=0.9")}
    assert names == {"tz_country_mismatch", "language_mismatch", "undeclared_hosting_network"}


def test_privacy_modes_and_fingerprint() -> None:
    assert protect_ip("203.0.113.77", "truncate", b"k") == "203.0.113.0/24"
    hashed = protect_ip("203.0.113.77", "hash", b"k")
    assert hashed is not None and hashed.startswith("hmac:") and "203" not in hashed
    assert protect_ip("203.0.113.77", "hash", b"k") == hashed != protect_ip("203.0.113.77", "hash", b"other")
    assert header_fingerprint(["user-agent", "accept"]) != header_fingerprint(["accept", "user-agent"])


# -- through the real gateway, with the official SDK ---------------------------------------------------

def _event_for(gateway: RunningGateway, marker: str) -> dict:
    deadline = time.time() + 10
    while time.time() < deadline:
        for event in gateway.events():
            if event["request"]["messages"] and event["request"]["messages"][-1]["content"] == marker:
                return event
        time.sleep(0.1)
    raise AssertionError(f"no event for {marker}")


def test_official_sdk_through_gateway_is_valid_and_forgeries_get_their_status(gateway: RunningGateway, tmp_path: Path) -> None:
    key = gateway.create_key("attested")
    identity = Identity.load_or_create(tmp_path / "sdk")
    http_client = attesting_client(api_key=key["secret"], base_url=gateway.base_url, identity=identity,
                                   signal_overrides={"tz": "Europe/Paris", "utc_offset_min": 60, "locale": "fr_FR"})
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], http_client=http_client)
    client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "attested-1"}])
    stream = client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "attested-stream"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "The answer is forty-two."
    event = _event_for(gateway, "attested-1")
    assert event["attestation"]["status"] == "valid"
    assert event["attestation"]["install_id"] == identity.install_id and event["attestation"]["tz"] == "Europe/Paris"
    assert event["client"]["header_fp"]
    assert _event_for(gateway, "attested-stream")["attestation"]["status"] == "valid"

    headers = {"Authorization": f"Bearer {key['secret']}", "Content-Type": "application/json"}
    body = b'{"model": "stub-1", "messages": [{"role": "user", "content": "forged-body"}]}'
    request = httpx.Request("POST", gateway.base_url + "/chat/completions", content=body, headers=headers)
    sign_request(request, identity)
    forged = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    httpx.post(gateway.base_url + "/chat/completions", headers=forged, content=body.replace(b"stub-1", b"stub-1 "))
    replay = httpx.post(gateway.base_url + "/chat/completions", headers=forged, content=body)
    assert replay.status_code == 200
    httpx.post(gateway.base_url + "/chat/completions", headers=forged, content=body)  # same nonce again
    deadline = time.time() + 10
    statuses: list[str] = []
    while len(statuses) < 3 and time.time() < deadline:  # events are written in batches, off the hot path
        statuses = [e["attestation"]["status"] for e in gateway.events() if e["request"]["messages"] and
                    e["request"]["messages"][-1]["content"] == "forged-body"]
        time.sleep(0.1)
    assert statuses == ["invalid", "valid", "replayed"]
    stranger = Identity.load_or_create(tmp_path / "stranger")
    request = httpx.Request("POST", gateway.base_url + "/chat/completions", content=body.replace(b"forged-body", b"unenrolled"), headers=headers)
    sign_request(request, stranger)
    httpx.post(gateway.base_url + "/chat/completions", headers={k: v for k, v in request.headers.items() if k.lower() != "content-length"}, content=request.content)
    assert _event_for(gateway, "unenrolled")["attestation"]["status"] == "missing_key"
    garbage = httpx.post(gateway.base_url + "/chat/completions", content=body.replace(b"forged-body", b"garbage"),
                         headers={**headers, "Signature-Input": "dg=(((", "Signature": "nonsense", SIGNALS_HEADER: "%%%"})
    assert garbage.status_code == 200
    assert _event_for(gateway, "garbage")["attestation"]["status"] == "invalid"


# -- installs are bound to the account that enrolled them ------------------------------------------------

def test_install_enrolled_for_another_account_is_invalid(identity: Identity) -> None:
    bound = AttestationVerifier({identity.install_id: InstallKey(identity.public_key_b64, "acct_a")}, clock_skew_s=60)
    result = verify_as(bound, signed(identity), account_id="acct_b")
    assert result["status"] == "invalid" and result["reason"].startswith(OTHER_ACCOUNT)
    assert result["install_id"] == identity.install_id  # the signature held: the install really is shared (a hydra link)
    assert verify_as(bound, signed(identity), account_id="acct_a")["status"] == "valid"


def test_registry_binds_installs_to_their_account(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    assert registry.enroll_install("key_1", "inst_bound1", "pk-1", account_id="acct_a") is True
    assert registry.enroll_install("key_2", "inst_bound1", "pk-1", account_id="acct_a") is False  # another key, same account
    with pytest.raises(UsageError, match=OTHER_ACCOUNT):
        registry.enroll_install("key_3", "inst_bound1", "pk-1", account_id="acct_b")
    keys = registry.install_keys()
    assert keys == {"inst_bound1": "pk-1"} and getattr(keys["inst_bound1"], "account_id", None) == "acct_a"
    assert registry.install_keys(["inst_bound1", "inst_nope"]) == {"inst_bound1": "pk-1"}
    registry.close()


# -- enrollment needs proof of possession ------------------------------------------------------------------

def enroll_payload(identity: Identity, api_key: str, *, signer: Identity | None = None, created: int | None = None) -> bytes:
    """An enrollment body for ``identity``'s public key, bound to ``api_key``, its proof signed by ``signer`` (default: the install)."""
    created = int(time.time()) if created is None else created
    proof = (signer or identity).private_key.sign(enrollment_message(identity.install_id, identity.public_key_b64, created,
                                                                     api_key_digest(api_key)))
    return orjson.dumps({"install_id": identity.install_id, "public_key": identity.public_key_b64, "created": created,
                         "proof": base64.urlsafe_b64encode(proof).decode().rstrip("=")})


def test_enrollment_proof_is_checked(identity: Identity, tmp_path: Path) -> None:
    collector = SignalCollector(Settings())
    thief = Identity.load_or_create(tmp_path / "thief")
    key_1, key_2, key_3 = (api_key_digest(k) for k in ("sk-one", "sk-two", "sk-three"))
    for body, status in ((enroll_payload(identity, "sk-one", signer=thief), 403),
                         (enroll_payload(identity, "sk-one", created=int(time.time()) - 3600), 403),
                         (enroll_payload(identity, "sk-other"), 403),  # a proof made for another API key: replayed
                         (orjson.dumps({"install_id": identity.install_id, "public_key": identity.public_key_b64}), 422)):
        with pytest.raises(EnrollmentError) as info:
            collector.enroll("key_1", "acct_a", body, api_key_sha256=key_1)
        assert info.value.status == status
    assert not collector.verifier.has_key(identity.install_id)
    assert collector.enroll("key_1", "acct_a", enroll_payload(identity, "sk-one"), api_key_sha256=key_1)["status"] == "enrolled"
    assert collector.enroll("key_2", "acct_a", enroll_payload(identity, "sk-two"), api_key_sha256=key_2)["status"] == "already_enrolled"
    with pytest.raises(EnrollmentError, match=OTHER_ACCOUNT):
        collector.enroll("key_3", "acct_b", enroll_payload(identity, "sk-three"), api_key_sha256=key_3)


# -- timezones: one country for region rules, every country for the consistency check ---------------------

def test_timezone_countries_primary_for_regions_all_for_consistency() -> None:
    assert primary_country("Europe/Berlin") == "DE" and primary_country("Europe/Oslo") == "NO"
    assert primary_country("Asia/Calcutta") == "IN" and primary_country("US/Eastern") == "US"  # links
    assert primary_country("Etc/UTC") is None and primary_country(None) is None
    assert {"DE", "DK", "NO", "SE"} <= countries_for_timezone("Europe/Berlin")
    attested = {"status": "valid", "tz": "Europe/Berlin"}
    assert consistency_signals(attested, {"country": "DK"}, None) == []  # any country of the zone is consistent
    assert [s["name"] for s in consistency_signals(attested, {"country": "BR"}, None)] == ["tz_country_mismatch"]


def _region_collector(identity: Identity, **network: Any) -> SignalCollector:
    return SignalCollector(Settings(network={"region_source": "timezone", **network}),
                           install_keys={identity.install_id: identity.public_key_b64})


def _collect(collector: SignalCollector, request: httpx.Request, peer: str = "192.0.2.1", xfp: str | None = None) -> Any:
    headers = [(k.encode(), v.encode()) for k, v in request.headers.items()]
    if xfp is not None:
        headers.append((b"x-forwarded-proto", xfp.encode()))
    return collector.collect("POST", request.url.raw_path.decode(), headers, peer, request.content, account_id="acct_a")


def test_timezone_region_rule_uses_the_zones_own_country(identity: Identity) -> None:
    berlin = {"tz": "Europe/Berlin"}
    allow_de = _region_collector(identity, allow_countries=["DE"])
    result = _collect(allow_de, signed(identity, overrides=berlin))
    assert result.attestation["status"] == "valid" and result.region_denied is None
    deny_no = _region_collector(identity, deny_countries=["NO"])
    assert _collect(deny_no, signed(identity, overrides=berlin)).region_denied is None
    assert "(NO)" in (_collect(deny_no, signed(identity, overrides={"tz": "Europe/Oslo"})).region_denied or "")


# -- X-Forwarded-Proto only from trusted proxies ---------------------------------------------------------------

def test_forwarded_proto_is_believed_only_from_a_trusted_peer(identity: Identity) -> None:
    collector = SignalCollector(Settings(network={"trusted_proxies": ["10.0.0.0/8"]}),
                                install_keys={identity.install_id: identity.public_key_b64})
    https = "https://gw.test/v1/chat/completions"
    assert _collect(collector, signed(identity, url=https), peer="10.0.0.2", xfp="https").attestation["status"] == "valid"
    # An untrusted client cannot choose the scheme the gateway reconstructs:
    assert _collect(collector, signed(identity, url=https), peer="198.51.100.7", xfp="https").attestation["status"] == "invalid"
    assert _collect(collector, signed(identity), peer="198.51.100.7", xfp="https").attestation["status"] == "valid"
    assert forwarded_scheme("10.0.0.2", {"x-forwarded-proto": "HTTPS, http"}, collector.trusted) == "https"
    assert forwarded_scheme("10.0.0.2", {"x-forwarded-proto": "gopher"}, collector.trusted) == "http"


# -- attestation.nonce_ttl_s ---------------------------------------------------------------------------------------

def test_nonce_ttl_is_wired_and_too_short_is_a_config_error(tmp_path: Path) -> None:
    assert SignalCollector(Settings()).verifier.nonces.ttl_s == 900  # unset: 3 × clock_skew_s
    assert SignalCollector(Settings(attestation={"clock_skew_s": 600})).verifier.nonces.ttl_s == 1800
    assert SignalCollector(Settings(attestation={"nonce_ttl_s": 4000})).verifier.nonces.ttl_s == 4000
    with pytest.raises(ConfigError, match="nonce_ttl_s"):
        SignalCollector(Settings(attestation={"nonce_ttl_s": 600}))
    with pytest.raises(RuntimeError, match="nonce_ttl_s"):  # refused at start-up, with the reason in the log
        start_gateway(tmp_path, "http://127.0.0.1:9/v1", attestation={"nonce_ttl_s": 600})


def test_a_nonce_is_remembered_for_the_configured_ttl(identity: Identity) -> None:
    verifier = AttestationVerifier({identity.install_id: identity.public_key_b64}, clock_skew_s=60, nonce_ttl_s=1000)
    request = signed(identity)
    assert verify(verifier, request)["status"] == "valid"  # type: ignore[index]
    nonce = request.headers["signature-input"].split('nonce="', 1)[1].split('"', 1)[0]
    assert verifier.nonces.check_and_add(nonce, time.time() + 990) is False  # still remembered
    assert verifier.nonces.check_and_add(nonce, time.time() + 1010) is True  # forgotten after the TTL


# -- installs enrolled by another gateway process ----------------------------------------------------------------

class CountingSource:
    """A registry stand-in that counts its queries."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known, self.calls, self.ids_asked = known, 0, 0

    def __call__(self, install_ids: Any = None) -> dict[str, str]:
        if install_ids is None:
            return {}
        self.calls += 1
        self.ids_asked += len(install_ids)
        return {i: self.known[i] for i in install_ids if i in self.known}


def test_install_cache_misses_are_looked_up_off_the_request_path_and_negative_cached(identity: Identity) -> None:
    source = CountingSource({identity.install_id: identity.public_key_b64})
    cache = InstallKeyCache(source, negative_ttl_s=60, batch_delay_s=0.05, max_pending=256)
    assert cache.get(identity.install_id) is None  # a miss answers at once, from memory
    assert cache.wait_idle() and cache.get(identity.install_id) is not None  # ... and is found for the next request
    started = time.perf_counter()
    for round_ in range(3):  # a flood: thousands of unknown ids, repeated
        for i in range(2000):
            assert cache.get(f"inst_unknown_{i}") is None
        assert cache.wait_idle(), round_
    assert time.perf_counter() - started < 5
    assert source.calls <= 12 and source.ids_asked <= 2000  # batched, bounded, and each unknown id asked about once
    calls = source.calls
    for _ in range(100):
        cache.get("inst_unknown_0")
    assert cache.wait_idle() and source.calls == calls  # negative cache: no query per request
    cache.close()


def test_gateway_picks_up_an_install_enrolled_by_another_process(gateway: RunningGateway, tmp_path: Path) -> None:
    key = gateway.create_key("multi-process")
    identity = Identity.load_or_create(tmp_path / "elsewhere")
    other_process = Registry(gateway.database)  # what another gateway process does when it enrolls an install
    other_process.enroll_install(key["key_id"], identity.install_id, identity.public_key_b64, account_id=key["account_id"])
    other_process.close()
    statuses: list[str] = []
    deadline = time.time() + 10
    while "valid" not in statuses and time.time() < deadline:
        marker = f"elsewhere-{len(statuses)}"
        post_signed(gateway, key["secret"], identity, marker)
        statuses.append(_event_for(gateway, marker)["attestation"]["status"])
    assert statuses[-1] == "valid" and len(statuses) <= 3, statuses  # no restart needed


# -- through the real gateway: account binding and proof of possession ----------------------------------------------

def post_signed(gateway: RunningGateway, secret: str, identity: Identity, marker: str) -> httpx.Response:
    body = orjson.dumps({"model": "stub-1", "messages": [{"role": "user", "content": marker}]})
    request = httpx.Request("POST", gateway.base_url + "/chat/completions", content=body,
                            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
    sign_request(request, identity)
    return httpx.post(request.url, content=body, headers={k: v for k, v in request.headers.items() if k.lower() != "content-length"})


def test_install_of_one_account_used_with_another_accounts_key(gateway: RunningGateway, tmp_path: Path) -> None:
    owner = gateway.create_key("owner")
    second = gateway.admin("POST", f"/admin/v1/accounts/{owner['account_id']}/keys", json={}).json()  # same account, another key
    stranger = gateway.create_key("stranger")
    identity = Identity.load_or_create(tmp_path / "bound")
    owner_client = openai.OpenAI(base_url=gateway.base_url, api_key=owner["secret"],
                                 http_client=attesting_client(api_key=owner["secret"], base_url=gateway.base_url, identity=identity))
    owner_client.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "bound-owner"}])
    assert _event_for(gateway, "bound-owner")["attestation"]["status"] == "valid"
    assert post_signed(gateway, second["secret"], identity, "bound-second-key").status_code == 200
    assert _event_for(gateway, "bound-second-key")["attestation"]["status"] == "valid"
    post_signed(gateway, stranger["secret"], identity, "bound-stranger")
    attestation = _event_for(gateway, "bound-stranger")["attestation"]
    assert attestation["status"] == "invalid" and attestation["reason"].startswith(OTHER_ACCOUNT)
    refused = httpx.post(gateway.root_url + "/v1/distillguard/enroll", content=enroll_payload(identity, stranger["secret"]),
                         headers={"Authorization": f"Bearer {stranger['secret']}"})
    assert refused.status_code == 409 and OTHER_ACCOUNT in refused.json()["error"]["message"]


def test_enrolling_a_public_key_without_its_private_key_is_refused(gateway: RunningGateway, tmp_path: Path) -> None:
    key = gateway.create_key("enroller")
    victim, thief = Identity.load_or_create(tmp_path / "victim"), Identity.load_or_create(tmp_path / "thief")
    url, auth = gateway.root_url + "/v1/distillguard/enroll", {"Authorization": f"Bearer {key['secret']}"}
    forged = httpx.post(url, content=enroll_payload(victim, key["secret"], signer=thief), headers=auth)
    assert forged.status_code == 403
    assert forged.json()["error"]["code"] == "enrollment_failed" and "proof" in forged.json()["error"]["message"]
    bare = httpx.post(url, json={"install_id": victim.install_id, "public_key": victim.public_key_b64}, headers=auth)
    assert bare.status_code == 422 and bare.json()["error"]["code"] == "enrollment_failed"
    post_signed(gateway, key["secret"], victim, "victim-not-enrolled")
    assert _event_for(gateway, "victim-not-enrolled")["attestation"]["status"] == "missing_key"
    other = gateway.create_key("eavesdropper")
    captured = enroll_payload(victim, key["secret"])  # an enrollment seen on its way to the gateway, replayed with another key
    replayed = httpx.post(url, content=captured, headers={"Authorization": f"Bearer {other['secret']}"})
    assert replayed.status_code == 403 and "API key" in replayed.json()["error"]["message"]
    assert httpx.post(url, content=captured, headers=auth).json()["status"] == "enrolled"


def _tampered(identity: Identity) -> list[tuple[str, str, list[tuple[str, str]], bytes]]:
    """Signed requests, untouched and with each part changed, as (method, url, headers, body)."""
    cases = []
    for i in range(12):
        request = signed(identity, body=b'{"model": "m", "n": %d}' % i)
        headers = list(request.headers.items())
        cases.append((request.method, str(request.url), headers, request.content))
        cases.append((request.method, str(request.url), headers, request.content + b" "))
        cases.append((request.method, URL.replace("/chat/", "/x/"), headers, request.content))
        cases.append(("PUT", str(request.url), headers, request.content))

        def swap(name: str, change: Callable[[str], str], headers: list[tuple[str, str]] = headers) -> list[tuple[str, str]]:
            return [(k, change(v) if k.lower() == name else v) for k, v in headers]

        cases.append((request.method, str(request.url), swap("signature-input", lambda v: v.replace(TAG, "other-tag")), request.content))
        cases.append((request.method, str(request.url), swap("signature-input", lambda v: v.replace('alg="ed25519"', 'alg="rsa-pss-sha512"')),
                      request.content))
        cases.append((request.method, str(request.url), swap("signature-input", lambda v: v + ";extra=1"), request.content))
        cases.append((request.method, str(request.url), swap("signature", lambda v: v[:10] + ("A" if v[10] != "A" else "B") + v[11:]),
                      request.content))
        cases.append((request.method, str(request.url), swap("dg-client-signals", lambda v: v[:-2] + "xx"), request.content))
        cases.append((request.method, str(request.url), swap("content-digest", lambda v: v.replace("sha-256", "sha-512")), request.content))
    return cases


def test_fast_path_gives_the_librarys_verdict_on_every_tampering(identity: Identity, monkeypatch: pytest.MonkeyPatch) -> None:
    """The canonical-shape fast path only ever accepts what the library accepts, and does take the common case."""
    from distillguard.signals import fast_verify as fast

    cases = _tampered(identity)
    with_fast = AttestationVerifier({identity.install_id: identity.public_key_b64})
    fast_results = [with_fast.verify(*case) for case in cases]
    calls: list[bool] = []
    real = fast.fast_verify

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        calls.append(result is not None)
        return result

    monkeypatch.setattr("distillguard.signals.attestation.fast_verify", lambda *a, **k: None)
    library_only = AttestationVerifier({identity.install_id: identity.public_key_b64})
    library_results = [library_only.verify(*case) for case in cases]
    assert [r["status"] for r in fast_results] == [r["status"] for r in library_results]  # type: ignore[index]
    assert sum(r["status"] == "valid" for r in fast_results) == 12  # type: ignore[index]
    monkeypatch.setattr("distillguard.signals.attestation.fast_verify", spy)
    fresh = AttestationVerifier({identity.install_id: identity.public_key_b64})
    for request in (signed(identity, body=b'{"k": %d}' % i) for i in range(5)):
        assert verify(fresh, request)["status"] == "valid"  # type: ignore[index]
    assert calls == [True] * 5  # the untouched SDK requests took the fast path
