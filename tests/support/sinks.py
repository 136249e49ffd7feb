"""Local receivers for failure and staleness notices: an SMTP server and a webhook endpoint."""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message

from sandbox.server import Request, Response, SandboxServer, json_response, route


class Mailbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [message for message in self.messages if message["To"] == address]


def body(message: Message) -> str:
    """The text of a (possibly multipart) message."""
    return "\n".join(part.get_payload(decode=True).decode() for part in message.walk() if not part.is_multipart())


class WebhookSink(SandboxServer):
    """A webhook endpoint that keeps every JSON document posted to /hooks/kosli."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict] = []

    @route("POST", r"/hooks/kosli")
    def receive(self, request: Request) -> Response:
        self.received.append(request.json())
        return json_response(200, {"ok": True})
