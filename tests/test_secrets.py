"""Secrets (webhook secrets, the database URL's password, tokens) never show.

Not in repr() or str() of the settings and config objects, not in a
validation error, not in a start-up log line, not in the admin API or the
dashboard. They are unwrapped only where they are used: the engine's URL and
the signature.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from monitor.alerting.schemas import WebhookCreate
from monitor.app import create_app
from monitor.config import ConfigFile, WebhookConfig, load_config_file
from monitor.db.engine import build_engine
from monitor.errors import ConfigError, redact_endpoint, redact_url
from monitor.settings import Settings, load_settings

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"webhook-marker-0451-secret").decode()
DB_PASSWORD = "dbpw-marker-0451"
PG_URL = f"postgresql+psycopg://thermostat:{DB_PASSWORD}@db.internal:5432/thermostat"
ADMIN_TOKEN = "admin-marker-0451-token"
FEEDBACK_TOKEN = "feedback-marker-0451-token"
MARKERS = (WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"), DB_PASSWORD, ADMIN_TOKEN)


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        shown = str(text)
        for marker in MARKERS:
            assert marker not in shown, f"{marker!r} leaked in: {shown[:300]}"
        assert "marker-0451" not in shown, shown[:300]


def _config(tmp_path: Path, **sections: object) -> Path:
    path = tmp_path / "thermostat.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


def _webhooks(url: str = "https://hooks.example.com/t") -> list[dict[str, object]]:
    return [{"url": url, "secret": WEBHOOK_SECRET, "events": ["alert.firing"]}]


def test_settings_and_config_repr_and_str_hide_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _config(
        tmp_path,
        webhooks=_webhooks(),
        settings={"database_url": PG_URL, "admin_token": ADMIN_TOKEN},
    )
    monkeypatch.setenv("THERMOSTAT_CONFIG", str(path))
    settings = load_settings()
    config = settings.config_file
    hook = config.webhooks[0]
    assert_no_secret(
        repr(settings),
        str(settings),
        settings.model_dump(),
        settings.model_dump_json(),
        repr(settings.database_url),
        str(settings.database_url),
        repr(config),
        str(config),
        config.model_dump(exclude={"settings"}),
        config.model_dump_json(exclude={"settings"}),
        repr(hook),
        str(hook),
        hook.model_dump(),
        hook.model_dump_json(),
        f"{settings} {config} {hook}",
    )
    # Unwrapped where used: the engine's URL and the signing key.
    assert settings.resolved_database_url == PG_URL
    assert hook.secret.get_secret_value() == WEBHOOK_SECRET
    # The input format is unchanged: the environment still takes a plain string.
    monkeypatch.setenv("THERMOSTAT_DATABASE_URL", "sqlite:////tmp/other.db")
    assert load_settings().resolved_database_url == "sqlite:////tmp/other.db"


def test_empty_database_url_still_means_the_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THERMOSTAT_DATABASE_URL", "")
    settings = load_settings()
    assert settings.database_url is None
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'home' / 'thermostat.db'}"
    assert isinstance(settings.resolved_database_url, str)


def test_validation_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    # A database URL of the wrong shape (a list) is echoed by a plain error;
    # short, as pydantic would cut a long one in the middle.
    bad_settings = {"database_url": [f"pg://:{DB_PASSWORD}@h"], "evaluate_interval_s": -1}
    with pytest.raises(ValidationError) as raw:
        Settings(admin_token=ADMIN_TOKEN, **bad_settings)  # type: ignore[arg-type]
    assert_no_secret(str(raw.value), repr(raw.value))
    path = _config(tmp_path, settings=bad_settings)
    with pytest.raises(ConfigError) as info:
        load_settings(config=path)
    assert_no_secret(info.value.message, str(info.value))

    # A webhook secret that is not base64, or a second problem beside a good one.
    unusable = WEBHOOK_SECRET[:-3]  # bad padding: refused by the signer
    for hooks in (
        [{"url": "https://h.example.com", "secret": unusable}],
        [{"url": "ftp://h.example.com", "secret": WEBHOOK_SECRET, "events": ["nope"]}],
    ):
        with pytest.raises(ValidationError) as raw:
            ConfigFile.model_validate({"webhooks": hooks})
        assert_no_secret(str(raw.value), repr(raw.value))
        with pytest.raises(ValidationError) as raw:
            WebhookConfig.model_validate(hooks[0])
        assert_no_secret(str(raw.value))
        with pytest.raises(ConfigError) as info:
            load_config_file(_config(tmp_path, webhooks=hooks))
        assert_no_secret(info.value.message)
        assert "secret must be base64" in info.value.message or "url" in info.value.message
        assert unusable.removeprefix("whsec_") not in str(raw.value) + info.value.message
    with pytest.raises(ValidationError) as raw:
        WebhookCreate.model_validate({"url": "https://h", "secret": unusable, "events": []})
    assert_no_secret(str(raw.value))
    assert unusable.removeprefix("whsec_") not in str(raw.value)


def test_webhook_secret_checks_keep_their_messages() -> None:
    for secret, expected in (
        ("", "String should have at least 1 character"),
        ("whsec_abcde", "secret must be base64"),
        (7, "Input should be a valid string"),
    ):
        with pytest.raises(ValidationError, match=expected):
            WebhookConfig.model_validate({"url": "https://h", "secret": secret})
    with pytest.raises(ValidationError, match="at most 255 characters"):
        WebhookCreate.model_validate({"url": "https://h", "secret": "a" * 256})
    body = WebhookCreate.model_validate({"url": "https://h", "secret": WEBHOOK_SECRET})
    assert_no_secret(repr(body))
    assert body.plain_secret() == WEBHOOK_SECRET
    assert WebhookCreate.model_validate({"url": "https://h"}).plain_secret() is None


@pytest.mark.parametrize(
    "url",
    [
        PG_URL.replace("postgresql+psycopg", "mysql"),  # unsupported backend
        PG_URL.replace("psycopg", "nodriver"),  # driver not installed
        PG_URL.replace("://", ":/"),  # not a URL
        f"postgresql://db.internal/thermostat?sslmode=require&password={DB_PASSWORD}",
    ],
)
def test_engine_errors_mask_the_password(url: str) -> None:
    try:
        build_engine(url).dispose()
    except ConfigError as exc:
        assert_no_secret(exc.message)
        assert "db.internal" in exc.message
    else:
        assert "sslmode" in url  # the only one that builds (lazily: nothing connects)
    assert_no_secret(redact_url(url))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXXSECRET", "https://hooks.slack.com/***"),
        ("https://discord.com/api/webhooks/1/SECRET", "https://discord.com/***"),
        ("https://hook.eu1.make.com/SECRET", "https://hook.eu1.make.com/***"),
        ("https://example.com/hook?token=SECRET", "https://example.com/***"),
        ("https://example.com?SECRET", "https://example.com/***"),
        ("https://user:SECRET@example.com:8443/", "https://example.com:8443"),
        ("https://user:SEC/RET@example.com/hook", "https://example.com/***"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("not a url SECRET", "***"),
    ],
)
def test_a_webhook_url_is_shown_as_its_host(url: str, shown: str) -> None:
    assert redact_endpoint(url) == shown


def test_redact_url_keeps_what_helps() -> None:
    assert redact_url(PG_URL) == "postgresql+psycopg://***@db.internal:5432/thermostat"
    assert redact_url("postgresql://u:a/b@h/d") == "postgresql://***@h/d"
    assert redact_url("sqlite:////tmp/t.db") == "sqlite:////tmp/t.db"
    assert redact_url("http://h:8000/v1") == "http://h:8000/v1"


def test_start_up_logs_admin_api_and_dashboard_never_show_secrets(
    make_settings: Callable[..., Settings],
    backend: str,
    db_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if backend == "postgres":  # trust auth: the password is carried, never checked
        db_url = make_url(db_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)
    path = _config(tmp_path, webhooks=_webhooks("http://127.0.0.1:9/hook"))
    caplog.set_level(logging.DEBUG)
    settings = make_settings(
        database_url=db_url,
        config=path,
        admin_token=ADMIN_TOKEN,
        feedback_token=FEEDBACK_TOKEN,
        log_level="DEBUG",
        recorder={"writer_process": False},
    )
    logging.getLogger(__name__).info("settings: %s %r", settings, settings.config_file)
    with TestClient(create_app(settings, role="all")) as client:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        listing = client.get("/api/webhooks", headers=admin)
        assert listing.status_code == 200
        (hook,) = listing.json()["items"]
        assert hook["source"] == "config" and hook["secret"].startswith("whsec_")
        login = client.post("/dashboard/login", data={"token": ADMIN_TOKEN})
        assert login.status_code == 200
        page = client.get("/dashboard/webhooks")
        assert page.status_code == 200 and "http://127.0.0.1:9/***" in page.text
        assert "/hook" not in page.text  # the path may be the endpoint's credential
        assert_no_secret(listing.text, page.text)
    assert caplog.records, "start-up logged nothing: the check would be empty"
    assert_no_secret(caplog.text, *(r.getMessage() for r in caplog.records))
