"""Webhook signatures check out under two independent verifiers.

The receiving side uses the `standardwebhooks` library and, separately, a
hand-rolled HMAC-SHA256 over `{id}.{timestamp}.{body}` keyed by the decoded
secret, exactly as the Standard Webhooks spec describes. A tampered body, a
changed timestamp or another secret must fail both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import pytest
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from tests.alerting.support import webhook_receiver
from tests.security.conftest import ADMIN, Sidecar


@pytest.fixture
def backend() -> str:
    return "sqlite"


def hand_rolled_valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [
        s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s.startswith("v1,")
    ]
    return any(hmac.compare_digest(expected, g) for g in given)


def test_signatures_verify_independently_and_tampering_is_caught(sidecar: Sidecar) -> None:
    with webhook_receiver([200]) as receiver, httpx.Client(base_url=sidecar.base) as client:
        created = client.post(
            "/api/webhooks",
            headers=ADMIN,
            json={"url": receiver.url, "events": ["alert.firing", "calibration.activated"]},
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        for _ in range(2):
            sent = client.post(f"/api/webhooks/{hook['id']}/test", headers=ADMIN)
            assert sent.status_code == 200 and sent.json()["delivered"], sent.text
    secret = hook["secret"]
    assert len(receiver.requests) == 2
    for headers, body in receiver.requests:
        assert headers["webhook-signature"].startswith("v1,")
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
        Verifier(secret).verify(body, headers)  # raises if invalid
        assert hand_rolled_valid(secret, headers, body)
        payload = json.loads(body)
        assert {"type", "timestamp", "data"} <= payload.keys()

        tampered = body.replace(b"}", b" }", 1)
        later = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)}
        other_secret = "whsec_" + base64.b64encode(b"another secret of 24 bytes").decode()
        for bad_headers, bad_body, key in (
            (headers, tampered, secret),
            (later, body, secret),
            (headers, body, other_secret),
        ):
            assert not hand_rolled_valid(key, bad_headers, bad_body)
            with pytest.raises(WebhookVerificationError):
                Verifier(key).verify(bad_body, bad_headers)
    ids = [h["webhook-id"] for h, _ in receiver.requests]
    assert len(set(ids)) == 2  # each message has its own id
