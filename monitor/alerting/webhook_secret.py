"""The Standard Webhooks secret check, shared by the config file and the admin API.

Kept apart from `delivery` so that `monitor.config` can use it: `delivery`
imports the settings, which import the config.
"""

from __future__ import annotations

from standardwebhooks.webhooks import Webhook as Signer


def check_secret(secret: str) -> str:
    """A usable Standard Webhooks secret (`whsec_` + base64), or ValueError."""
    try:
        Signer(secret)
    except Exception:
        raise ValueError("secret must be base64, optionally prefixed with whsec_") from None
    return secret
