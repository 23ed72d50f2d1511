"""`graft serve`: a run directory (PyTorch) or an ONNX export (onnxruntime) behind a small HTTP server.

`POST /predict {"inputs": [...]}` answers `{"predictions": [...]}`, one row per input as `graft predict` writes it;
`GET /health` says what is served. The standard library's ThreadingHTTPServer reads each request on a thread of its
own; one worker thread runs the model over the requests that arrived together (up to `max_batch` inputs, waiting at
most `wait_ms` after the first), so concurrent callers share forward passes. The standard library does all this: a
web framework would add a dependency and nothing a local model server needs.
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import json
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.errors import GraftError

if TYPE_CHECKING:
    from collections.abc import Callable

    from graft.trained import Predictor

MAX_BODY = 64 * 2**20
"""The largest request body read, in bytes; a larger one is refused with 413."""
USAGE = 'send {"inputs": [...]}: a list of inputs'


@dataclass
class Job:
    """One request's inputs, waiting for their rows (or an error: HTTP status, one line)."""

    items: list[Any]
    done: threading.Event = field(default_factory=threading.Event)
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: tuple[int, str] | None = None


class Batcher:
    """The one thread that runs the model: it takes the first queued job, gathers the jobs that arrive within
    `wait_s` while the batch has fewer than `max_batch` inputs, predicts on all their inputs at once and hands each
    job its rows. A job whose inputs fail is answered alone, so one bad request never fails the others."""

    def __init__(self, predict: Callable[[list[Any]], list[dict[str, Any]]], max_batch: int, wait_s: float) -> None:
        self.predict, self.max_batch, self.wait_s = predict, max_batch, wait_s
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="graft-serve-model", daemon=True)
        self.thread.start()

    def submit(self, items: list[Any]) -> Job:
        """Queue `items` and wait for their rows."""
        job = Job(items)
        self.queue.put(job)
        job.done.wait()
        return job

    def stop(self) -> None:
        """Finish the batch in hand, then end the thread."""
        self.queue.put(None)
        self.thread.join()

    def _work(self) -> None:
        while (job := self.queue.get()) is not None:
            jobs = [job, *self._arriving(len(job.items))]
            self._run(jobs)
            if jobs[-1] is None:
                return

    def _arriving(self, inputs: int) -> list[Job | None]:
        """The jobs queued within `wait_s`, while the batch has room; a stop ends the list (and the thread)."""
        jobs: list[Job | None] = []
        deadline = time.monotonic() + self.wait_s
        while inputs < self.max_batch:
            try:
                job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            jobs.append(job)
            if job is None:
                break
            inputs += len(job.items)
        return jobs

    def _run(self, jobs: list[Job | None]) -> None:
        work = [job for job in jobs if job is not None]
        try:
            rows = self.predict([x for job in work for x in job.items])
        except Exception as error:  # any failure is answered; the server goes on
            if len(work) > 1:
                for job in work:
                    self._run([job])
                return
            status = 400 if isinstance(error, GraftError) else 500
            work[0].error = (status, _one_line(error) if status == 400 else f"prediction failed: {_one_line(error)}")
            work[0].done.set()
            return
        start = 0
        for job in work:
            job.rows, start = rows[start:start + len(job.items)], start + len(job.items)
            job.done.set()


class PredictionServer(ThreadingHTTPServer):
    """The HTTP server: requests on their own threads, predictions through one Batcher."""

    daemon_threads = True

    def __init__(self, predictor: Predictor, address: tuple[str, int], max_batch: int, wait_ms: float,
                 max_inputs: int, about: dict[str, Any]) -> None:
        from graft.tasks import get_task

        self.predictor, self.max_inputs = predictor, max_inputs
        self.input_kind = get_task(predictor.task).input_kind
        self.health = {"status": "ok", **about, "task": predictor.task, "labels": predictor.labels,
                       "max_batch": max_batch, "max_inputs": max_inputs}
        # before binding: a failed bind calls server_close, which stops it
        self.batcher = Batcher(lambda items: predictor.rows(items)[0], max_batch, wait_ms / 1000)
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def answer(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """The status and JSON of a POST /predict with `body`."""
        try:
            request = json.loads(body)
        except ValueError as error:
            return 400, {"error": f"request body: not JSON ({_one_line(error)}); {USAGE}"}
        inputs = request.get("inputs") if isinstance(request, dict) else None
        if not isinstance(inputs, list):
            return 400, {"error": f"request body: no list under \"inputs\"; {USAGE}"}
        if len(inputs) > self.max_inputs:
            return 413, {"error": f"inputs: {len(inputs)} in one request, at most {self.max_inputs} (graft serve "
                                  f"--max-inputs); send them in several requests"}
        try:
            items = self._decoded(inputs)
        except GraftError as error:
            return 400, {"error": str(error)}
        job = self.batcher.submit(items)
        if job.error is not None:
            return job.error[0], {"error": job.error[1]}
        return 200, {"predictions": job.rows}

    def _decoded(self, inputs: list[Any]) -> list[Any]:
        """A classifier's inputs are strings (texts; image files on this machine, or base64 data: URLs)."""
        kind = self.input_kind
        if kind is None:
            return inputs  # a language model: prompts or conversations, which the predictor checks
        for i, x in enumerate(inputs):
            if not isinstance(x, str):
                wanted = "a text" if kind == "text" else "an image file's path or a data: URL (base64)"
                raise GraftError(f"input {i + 1}: expected a string, {wanted}; got {_json_type(x)}")
        return [_data_url(x, i) if kind == "image" and x.startswith("data:") else x for i, x in enumerate(inputs)]

    def server_close(self) -> None:
        super().server_close()
        self.batcher.stop()


class Handler(BaseHTTPRequestHandler):
    """POST /predict and GET /health, JSON both ways; any other path is 404."""

    server: PredictionServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path != "/health":
            return self._not_found()
        self._send(200, self.server.health)

    def do_POST(self) -> None:
        if self.path != "/predict":
            return self._not_found()
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return self._send(411, {"error": "request body: no Content-Length; send the JSON with its length"})
        if length > MAX_BODY:
            self.close_connection = True  # the body is not read, so the connection cannot carry another request
            return self._send(413, {"error": f"request body: {length} bytes, at most {MAX_BODY}; send fewer inputs "
                                             f"per request"})
        try:
            status, body = self.server.answer(self.rfile.read(length))
        except Exception as error:  # a bug must not leave the caller without an answer
            status, body = 500, {"error": f"prediction failed: {_one_line(error)}"}
        self._send(status, body)

    def _not_found(self) -> None:
        self._send(404, {"error": f"no {self.command} {self.path}; POST /predict {{\"inputs\": [...]}} or GET /health"})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per request would drown the terminal; errors go back to the caller."""


def make_server(source: Path | str, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 32,
                wait_ms: float = 5.0, max_inputs: int = 256) -> PredictionServer:
    """A server for a run directory (PyTorch) or an ONNX export (onnxruntime), bound to `host:port` (0: a free
    port, see `.url`) and not yet serving: call `.serve_forever()`, and `.shutdown()` then `.server_close()` to
    stop."""
    from graft.onnx_export import EXPORT_FILE, is_onnx_export
    from graft.trained import Predictor

    for name, value in (("max_batch", max_batch), ("max_inputs", max_inputs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GraftError(f"{name} = {value!r}: give a whole number of at least 1")
    source = Path(source)
    onnx = is_onnx_export(source)
    about = {"source": source.resolve().name, "backend": "onnxruntime" if onnx else "pytorch",
             "precision": json.loads((source / EXPORT_FILE).read_text())["precision"] if onnx else "fp32"}
    predictor = Predictor(source, batch_size=max_batch, device="cpu" if onnx else None)
    try:
        return PredictionServer(predictor, (host, port), max_batch, wait_ms, max_inputs, about)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise GraftError(f"--port {port}: already in use on {host}; choose another (--port 0 picks a free one)") \
                from None
        raise GraftError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})") from None


class Stop(Exception):
    """SIGTERM (what `kill`, `docker stop` and service managers send), raised in the serving thread."""


def _stop(signum: int, frame: Any) -> None:
    raise Stop


def serve(source: Path | str, *, say: Callable[[str], None] = print, **options: Any) -> None:
    """Serve until Ctrl-C or SIGTERM; either stops the same way: the batch in hand is answered, the port closed
    (see `make_server` for the options)."""
    server = make_server(source, **options)
    about = server.health
    say(f"serving {about['source']} ({about['task']}, {about['backend']} {about['precision']}) at {server.url}: "
        f"POST /predict {{\"inputs\": [...]}}, GET /health; Ctrl-C stops")
    main = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    before = signal.signal(signal.SIGTERM, _stop) if main else None
    try:
        server.serve_forever()
    except (KeyboardInterrupt, Stop):
        say("stopped")
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)
        server.server_close()


def _data_url(url: str, i: int) -> Any:
    """An image sent inline as `data:image/...;base64,...`, decoded."""
    from PIL import Image, UnidentifiedImageError

    header, _, payload = url.partition(",")
    try:
        if not header.endswith(";base64"):
            raise ValueError("not base64")
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        image.load()
        return image
    except (ValueError, binascii.Error, UnidentifiedImageError, Image.DecompressionBombError, OSError) as error:
        raise GraftError(f"input {i + 1}: a data: URL that is not a base64 image ({_one_line(error)}); send "
                         f"data:image/png;base64,... or a file path") from None


def _json_type(value: Any) -> str:
    names = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__
