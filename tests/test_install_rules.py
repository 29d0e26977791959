"""install_id rules and the per-key install cap (issue #12, finding 12).

Before: enrollment accepted NUL, ESC and newlines in ``install_id`` (which
then reached events and logs) and any number of installs per key (200 in
0.2 s) — the reseller's shared key, enrolled by every customer.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from distillguard.client import Identity
from distillguard.signals.installs import valid_install_id
from distillguard.signals.protocol import api_key_digest, enrollment_message
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import UpstreamStub

CAP = 3


def _identity(install_id: str | None = None) -> Identity:
    return Identity(install_id or "inst_" + secrets.token_hex(12), Ed25519PrivateKey.generate(), Path("/nonexistent"))


def _enroll(gateway: RunningGateway, secret: str, identity: Identity) -> httpx.Response:
    created = int(time.time())
    proof = identity.private_key.sign(enrollment_message(identity.install_id, identity.public_key_b64, created, api_key_digest(secret)))
    body = {"install_id": identity.install_id, "public_key": identity.public_key_b64, "created": created,
            "proof": base64.urlsafe_b64encode(proof).decode().rstrip("=")}
    return httpx.post(gateway.base_url + "/distillguard/enroll", headers={"Authorization": f"Bearer {secret}"},
                      content=orjson.dumps(body), timeout=10)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("installs"), stub.base_url, attestation={"max_installs_per_key": CAP})
    yield gw
    gw.stop()


@pytest.mark.parametrize("install_id", ["inst_0123456789abcdef01234567", "host.example:7f-3_a", "A" * 128, "12345678"])
def test_ordinary_install_ids_are_valid(install_id: str) -> None:
    assert valid_install_id(install_id)


@pytest.mark.parametrize("install_id", ["inst_abc\x00def", "inst_\x1b[31mred", "inst_abc\ndef", "inst_abc\rdef", "inst abc def",
                                        "inst_ünïcode", "short", "A" * 129, "inst/../../etc", "", 12345678, None])
def test_odd_install_ids_are_not(install_id: object) -> None:
    assert not valid_install_id(install_id)


@pytest.mark.parametrize("install_id", ["inst_abc\x00defgh", "inst_\x1b[31mredred", "inst_abc\n2026 INFO forged", "short", "A" * 129])
def test_enrollment_refuses_odd_install_ids(gateway: RunningGateway, install_id: str) -> None:
    secret = gateway.create_key("odd-ids")["secret"]
    response = _enroll(gateway, secret, _identity(install_id))
    assert response.status_code == 422
    assert "install_id must be 8–128 characters" in response.json()["error"]["message"]
    assert "forged" not in "".join(line for line in gateway.log().splitlines() if line.startswith("2026 INFO"))


def test_a_key_enrolls_at_most_the_cap(gateway: RunningGateway) -> None:
    key = gateway.create_key("reseller")
    identities = [_identity() for _ in range(CAP + 2)]
    statuses = [_enroll(gateway, key["secret"], identity).status_code for identity in identities]
    assert statuses == [200] * CAP + [403, 403]
    refused = _enroll(gateway, key["secret"], identities[-1]).json()["error"]
    assert refused["type"] == "permission_error" and "install_limit_reached" in refused["message"]
    assert "max_installs_per_key" in refused["message"]
    again = _enroll(gateway, key["secret"], identities[0])  # an install already enrolled may enroll again
    assert again.status_code == 200 and again.json()["status"] == "already_enrolled"
    other = gateway.create_key("another")  # the cap is per key
    assert _enroll(gateway, other["secret"], _identity()).status_code == 200
    assert f"key {key['key_id']} refused a new install" in gateway.log()
