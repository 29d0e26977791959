"""Attestation end to end through the real gateway, forgeries, network signals, regions, privacy."""

from __future__ import annotations

import base64
import copy
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.client import Identity, attesting_client, sign_request
from distillguard.config import Settings
from distillguard.signals import AttestationVerifier, SignalCollector
from distillguard.signals.consistency import consistency_signals, countries_for_timezone
from distillguard.signals.network import client_ip, header_fingerprint, protect_ip
from distillguard.signals.protocol import SIGNALS_HEADER, decode_signals, encode_signals
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import UpstreamStub

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

@pytest.fixture(scope="module")
def stub() -> Iterator[UpstreamStub]:
    upstream = UpstreamStub().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("attest"), stub.base_url)
    yield gw
    gw.stop()


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
