"""registry/protocol.py subclasses uvicorn's private httptools protocol: uvicorn is pinned exactly,
and these tests fail, naming the uvicorn version, the moment what the subclass relies on changes."""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from registry.protocol import BoundedHttpToolsProtocol

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# What BoundedHttpToolsProtocol overrides, with the parameters uvicorn calls it with.
OVERRIDDEN = {
    "connection_made": ["transport"],
    "connection_lost": ["exc"],
    "data_received": ["data"],
    "on_message_begin": [],
    "on_url": ["url"],
    "on_header": ["name", "value"],
    "on_headers_complete": [],
    "on_body": ["body"],
    "on_message_complete": [],
    "send_400_response": ["msg"],
    "pause_writing": [],
    "resume_writing": [],
    "on_response_complete": [],
}


def broken(what: str) -> str:
    return (
        f"uvicorn {uvicorn.__version__}: {what}. registry/protocol.py relies on uvicorn's private "
        "httptools protocol: adapt it to this uvicorn, or keep the version pinned in pyproject.toml"
    )


def test_uvicorn_is_the_pinned_version() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = [
        re.fullmatch(r"uvicorn\[standard\]==([\w.]+)", d) for d in dependencies if d.startswith("uvicorn")
    ]
    assert len(pins) == 1 and pins[0] is not None, "pyproject.toml must pin uvicorn exactly (==)"
    assert uvicorn.__version__ == pins[0].group(1), broken(f"installed, but {pins[0].group(1)} is pinned")


def test_the_overridden_methods_exist_with_the_same_parameters() -> None:
    for name, parameters in OVERRIDDEN.items():
        method = getattr(HttpToolsProtocol, name, None)
        assert callable(method), broken(f"HttpToolsProtocol.{name} is gone")
        found = list(inspect.signature(method).parameters)[1:]
        assert found == parameters, broken(f"HttpToolsProtocol.{name} takes {found}, not {parameters}")
    # A callback raising (the header budget) must reach send_400_response through the parser's error.
    assert issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError)
    source = inspect.getsource(HttpToolsProtocol.data_received)
    assert "HttpParserError" in source and "send_400_response" in source, broken(
        "data_received no longer answers a parser error with send_400_response"
    )
    assert "waiting_for_100_continue" in inspect.getsource(RequestResponseCycle.__init__), broken(
        "RequestResponseCycle.waiting_for_100_continue is gone"
    )


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 5000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def _never_answers(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(3600)  # sleep-ok: an app that never answers; the test only drives the parser


def _connection() -> tuple[BoundedHttpToolsProtocol, FakeTransport]:
    config = uvicorn.Config(_never_answers, log_level="warning", lifespan="off")
    protocol = BoundedHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_the_state_the_watchdog_reads_is_there() -> None:
    protocol, _ = _connection()
    try:
        for attribute in ("loop", "transport", "flow", "client", "timeout_keep_alive", "cycle"):
            assert hasattr(protocol, attribute), broken(f"HttpToolsProtocol has no {attribute!r}")
        assert isinstance(protocol.flow, FlowControl) and protocol.flow.read_paused is False
        assert callable(protocol.flow.pause_reading), broken("FlowControl.pause_reading is gone")
        protocol.data_received(
            b"PUT /v2/a/blobs/uploads/x HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
            b"expect: 100-continue\r\n\r\n"
        )
        cycle = protocol.cycle
        assert isinstance(cycle, RequestResponseCycle), broken("on_headers_complete made no cycle")
        assert cycle.response_complete is False, broken("RequestResponseCycle.response_complete is gone")
        assert cycle.waiting_for_100_continue is True, broken("waiting_for_100_continue is not set")
        protocol._check_stalled()  # the watchdog runs against this uvicorn's state without error
    finally:
        protocol.connection_lost(None)
        for task in protocol.tasks:
            task.cancel()


async def test_an_oversized_header_is_answered_431() -> None:
    protocol, transport = _connection()
    try:
        protocol.data_received(b"GET /v2/ HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (70 * 1024) + b"\r\n\r\n")
        assert transport.written.startswith(b"HTTP/1.1 431 "), broken(
            f"an oversized header got {bytes(transport.written[:40])!r}"
        )
        assert transport.closed
    finally:
        protocol.connection_lost(None)
