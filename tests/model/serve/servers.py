"""The real server (uvicorn + our app) on a free local port, in a thread, for the serve tests."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from model.loader import LoadedModel, load_for_generation
from model.serve.server import ServeOptions, Server, bind, create_app, run_identity


@dataclass
class Running:
    url: str  # http://127.0.0.1:PORT
    app: FastAPI
    server: Server
    loaded: LoadedModel
    name: str

    @property
    def api(self) -> str:
        return self.url + "/v1"


@contextmanager
def running_server(run: Path, **options) -> Iterator[Running]:
    """Serve the checkpoint `run` until the block ends; `options` are `ServeOptions` fields."""
    loaded = load_for_generation(run, "cpu", "fp32")
    name, created = run_identity(run)
    app = create_app(loaded, ServeOptions(model_name=name, created=created, **options))
    sock = bind("127.0.0.1", 0)
    server = Server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield Running(f"http://127.0.0.1:{sock.getsockname()[1]}", app, server, loaded, name)
    finally:
        if not server.should_exit:  # (a second Ctrl-C would skip the clean shutdown)
            server.handle_exit(signal.SIGINT, None)
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "the test server did not stop"
