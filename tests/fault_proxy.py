"""A fault-injecting HTTP proxy in front of a real server, for the engine fault tests.

Starlette + uvicorn (both come with vLLM) in a background thread; httpx to the
upstream. Completion requests are numbered in the order they arrive
(1-based); ``faults`` maps a number to what happens to it:

- ``"500"``: answered ``500`` at once, never forwarded;
- ``("drop", k)``: forwarded, ``k`` stream events relayed, then the
  connection is cut mid-stream (the client sees an incomplete response);
- ``("hang", k)``: forwarded, ``k`` events relayed, then nothing more, ever;
  when the client gives up and disconnects, the proxy closes the upstream
  stream, so the server sees its client go (and vLLM aborts the request).

Every other request passes through unchanged.
"""

from __future__ import annotations

import asyncio
import threading
import time


class FaultProxy:
    def __init__(self, upstream: str, faults: dict[int, object] | None = None) -> None:
        import httpx
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response, StreamingResponse
        from starlette.routing import Route

        from driftsim.profiling.server import free_port

        self.upstream = upstream.rstrip("/")
        self.faults = dict(faults or {})
        self.completions = 0
        self.injected: list[tuple[int, object]] = []
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        client: httpx.AsyncClient | None = None

        async def handle(request: Request):
            nonlocal client
            if client is None:
                client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))
            body = await request.body()
            fault = None
            if request.url.path == "/v1/completions":
                self.completions += 1
                fault = self.faults.get(self.completions)
                if fault is not None:
                    self.injected.append((self.completions, fault))
            if fault == "500":
                return Response("injected fault: internal server error", status_code=500)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            url = f"{self.upstream}{request.url.path}" + (f"?{request.url.query}" if request.url.query else "")
            upstream = await client.send(client.build_request(request.method, url, content=body, headers=headers),
                                         stream=True)
            kind, k = fault if isinstance(fault, tuple) else (None, 0)

            async def relay():
                events = 0
                try:
                    async for line in upstream.aiter_lines():
                        yield (line + "\n").encode()
                        if line.startswith("data:"):
                            events += 1
                            if kind == "drop" and events >= k:
                                raise ConnectionAbortedError("injected fault: stream dropped")
                            if kind == "hang" and events >= k:
                                while not await request.is_disconnected():  # silent until the client leaves
                                    await asyncio.sleep(0.05)
                                return
                finally:
                    await upstream.aclose()

            media = upstream.headers.get("content-type", "application/json")
            return StreamingResponse(relay(), status_code=upstream.status_code, media_type=media)

        app = Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical",
                                                     lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fault proxy did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
