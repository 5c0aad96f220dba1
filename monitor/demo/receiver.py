"""A local webhook receiver for the demo that verifies every Standard Webhooks signature.

Verification uses the `standardwebhooks` library, independently of the code
that signed the message, so a received event is proof the signature is valid.
"""

from __future__ import annotations

import base64
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass
class ReceivedEvent:
    type: str
    data: dict[str, Any]
    signature_valid: bool
    message_id: str


@dataclass
class WebhookReceiver:
    secret: str
    events: list[ReceivedEvent] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/demo-hooks"

    def of_type(self, event_type: str) -> list[ReceivedEvent]:
        return [e for e in self.events if e.type == event_type]

    def start(self) -> WebhookReceiver:
        receiver = self
        verifier = Webhook(self.secret)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verifier.verify(body, headers)
                    valid = True
                except WebhookVerificationError:
                    valid = False
                payload = orjson.loads(body) if body else {}
                receiver.events.append(
                    ReceivedEvent(
                        type=str(payload.get("type")),
                        data=payload.get("data") or {},
                        signature_valid=valid,
                        message_id=headers.get("webhook-id", ""),
                    )
                )
                self.send_response(204 if valid else 400)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo prints what matters itself

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
