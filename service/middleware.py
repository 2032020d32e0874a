"""Request id, latency histogram and in-flight gauge for every request (pure ASGI, no body buffering).

`X-Request-Id`: the client's, when it is a short token, else a fresh one; echoed on every answer.
`rsd_request_duration_seconds{route,status}` uses the route template (`/jobs/{job_id}`), never the raw
path, so ids do not explode the label set. `rsd_inflight_requests` counts image requests only (`/upscale`,
`/jobs...`): a scrape or a health probe is not load.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
IMAGE_PATHS = ("/upscale", "/jobs")


def is_image_request(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in IMAGE_PATHS)


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        counted = is_image_request(scope.get("path", ""))
        if counted:
            metrics.INFLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                metrics.INFLIGHT.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.REQUEST_DURATION.labels(route=template, status=str(status)).observe(time.perf_counter() - started)
