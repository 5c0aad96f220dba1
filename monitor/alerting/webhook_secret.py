"""The Standard Webhooks secret check, shared by the config file and the admin API.

Kept apart from `delivery` so that `monitor.config` can use it: `delivery`
imports the settings, which import the config.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr
from pydantic_core import PydanticCustomError
from standardwebhooks.webhooks import Webhook as Signer

MAX_SECRET_LENGTH = 255  # the `webhooks.secret` column


def check_secret(secret: str) -> str:
    """A usable Standard Webhooks secret (`whsec_` + base64), or ValueError."""
    try:
        Signer(secret)
    except Exception:
        raise ValueError("secret must be base64, optionally prefixed with whsec_") from None
    return secret


def _checked(value: Any, max_length: int | None) -> Any:
    """Check the plain string before it is wrapped, with pydantic's own string messages.

    `Field(min_length=...)` on a SecretStr would say "at least 1 item", and the
    check needs the plain value anyway. Anything but a string is left for
    SecretStr to refuse ("Input should be a valid string").
    """
    plain = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not isinstance(plain, str):
        return value
    if not plain:
        raise PydanticCustomError(
            "string_too_short",
            "String should have at least {min_length} character",
            {"min_length": 1},
        )
    if max_length is not None and len(plain) > max_length:
        raise PydanticCustomError(
            "string_too_long",
            "String should have at most {max_length} characters",
            {"max_length": max_length},
        )
    check_secret(plain)
    return value


# Written as a plain string (config file, API body); held as SecretStr so that
# repr(), logs and dumps show `**********`. Unwrap only to store or sign.
WebhookSecret = Annotated[SecretStr, BeforeValidator(partial(_checked, max_length=None))]
StoredWebhookSecret = Annotated[
    SecretStr, BeforeValidator(partial(_checked, max_length=MAX_SECRET_LENGTH))
]
