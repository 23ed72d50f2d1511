"""`graft serve`: a run (PyTorch) or an ONNX export (onnxruntime) over HTTP on an ephemeral port; concurrent requests
answered as `Predictor` answers, batched together (checked by holding the model thread, not by timing), one bad
request never failing the others, every error one line of JSON, and Ctrl-C stopping the command cleanly."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

import graft
from graft.errors import GraftError
from graft.serve import Batcher, make_server
from tests.conftest import error_of, make_texts, trained_image_run, trained_text_run

TEXTS = [text for text, _ in make_texts(24, seed=41)]


class Running:
    """A server on a free port, serving on a thread until the block ends."""

    def __init__(self, source: Path, **options) -> None:
        self.server = make_server(source, port=0, **options)
        self.thread = threading.Thread(target=self.server.serve_forever)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def get(self, path: str) -> tuple[int, dict]:
        return self._answer(urllib.request.Request(self.server.url + path))

    def post(self, body, path: str = "/predict") -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self._answer(urllib.request.Request(self.server.url + path, data=data,
                                                   headers={"Content-Type": "application/json"}))

    @staticmethod
    def _answer(request: urllib.request.Request) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


def wait_until(condition) -> None:
    """Poll until `condition()` holds (a failure, not a timing, if it never does)."""
    for _ in range(60_000):
        if condition():
            return
        threading.Event().wait(0.001)
    raise AssertionError("the condition never held")


def same_rows(got: list[dict], expected: list[dict], key: str) -> None:
    assert [r[key] for r in got] == [r[key] for r in expected]
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5)  # padded with others: rounding


@pytest.fixture(scope="module")
def text_run(tiny_bert, tmp_path_factory) -> Path:
    return trained_text_run(tiny_bert, tmp_path_factory.mktemp("serve-text"))


@pytest.fixture(scope="module")
def sources(text_run) -> dict[str, Path]:
    return {"run": text_run, "onnx": graft.export(text_run, text_run.parent / "onnx", format="onnx")}


@pytest.mark.parametrize("kind", ["run", "onnx"])
def test_concurrent_requests_get_what_predictor_gives(kind, sources):
    source = sources[kind]
    requests = [TEXTS[i:i + 1 + i % 3] for i in range(0, 24, 2)]  # 1 to 3 texts each
    with Running(source, max_batch=8, wait_ms=20) as running:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda texts: running.post({"inputs": texts}), requests))
        status, health = running.get("/health")
    predictor = graft.Predictor(source)
    for texts, (code, body) in zip(requests, answers, strict=True):
        assert code == 200
        same_rows(body["predictions"], predictor.predict(texts), "text")
    assert status == 200 and health["status"] == "ok" and health["labels"] == ["billing", "delivery", "login"]
    assert health["backend"] == {"run": "pytorch", "onnx": "onnxruntime"}[kind] and health["precision"] == "fp32"
    assert health["task"] == "text_classification" and health["source"] == source.name


def test_requests_that_wait_together_run_in_one_batch():
    """The model thread is held on the first request; the five queued meanwhile then run as one batch."""
    calls, release = [], threading.Event()

    def predict(items):
        calls.append(list(items))
        release.wait()
        return [{"input": x} for x in items]

    batcher = Batcher(predict, max_batch=64, wait_s=0.0)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.submit, ["a"])
        wait_until(lambda: calls)
        rest = [pool.submit(batcher.submit, [f"b{i}", f"c{i}"]) for i in range(5)]
        wait_until(lambda: batcher.queue.qsize() == 5)
        release.set()
        jobs = [first.result(), *(f.result() for f in rest)]
    batcher.stop()
    assert calls[0] == ["a"] and len(calls) == 2 and sorted(calls[1]) == sorted(x for i in range(5)
                                                                              for x in (f"b{i}", f"c{i}"))
    for job in jobs:
        assert [r["input"] for r in job.rows] == job.items and job.error is None


def test_a_batch_caps_at_max_batch_inputs():
    calls, release = [], threading.Event()

    def predict(items):
        calls.append(len(items))
        release.wait()
        return [{} for _ in items]

    batcher = Batcher(predict, max_batch=4, wait_s=0.0)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher.submit, ["x"])]
        wait_until(lambda: calls)
        futures += [pool.submit(batcher.submit, ["x", "y"]) for _ in range(4)]
        wait_until(lambda: batcher.queue.qsize() == 4)
        release.set()
        for future in futures:
            future.result()
    batcher.stop()
    assert calls == [1, 4, 4]  # two requests of two, twice: the batch stops taking requests at four inputs


def test_one_bad_request_fails_alone():
    def predict(items):
        if "bad" in items:
            raise GraftError(f"input {items.index('bad') + 1}: bad")
        if "broken" in items:
            raise RuntimeError("the model broke\nwith a traceback")
        return [{"input": x} for x in items]

    batcher = Batcher(predict, max_batch=64, wait_s=0.05)  # however they group, each is answered alone
    with ThreadPoolExecutor(4) as pool:
        jobs = list(pool.map(batcher.submit, [["ok", "fine"], ["x", "bad"], ["broken"], ["last"]]))
    batcher.stop()
    assert [r["input"] for r in jobs[0].rows] == ["ok", "fine"] and jobs[0].error is None
    assert jobs[1].error == (400, "input 2: bad")  # counted within its own request
    assert jobs[2].error == (500, "prediction failed: the model broke with a traceback")
    assert [r["input"] for r in jobs[3].rows] == ["last"]


def test_errors_are_one_line_of_json(sources, monkeypatch):
    import graft.serve

    with Running(sources["onnx"], max_inputs=4) as running:
        answers = {
            "not json": running.post(b"{nope"),
            "no inputs": running.post({"texts": ["a"]}),
            "a number": running.post({"inputs": ["fine", 7]}),
            "empty text": running.post({"inputs": ["fine", "  "]}),
            "too many": running.post({"inputs": ["a"] * 5}),
            "elsewhere": running.post({"inputs": ["a"]}, path="/predictions"),
            "get predict": running.get("/predict"),
        }
        monkeypatch.setattr(graft.serve, "MAX_BODY", 10)
        answers["too big"] = running.post({"inputs": ["a long enough body"]})
        monkeypatch.undo()
        connection = http.client.HTTPConnection(*running.server.server_address[:2], timeout=60)
        connection.putrequest("POST", "/predict")
        connection.endheaders()
        response = connection.getresponse()
        answers["no length"] = response.status, json.loads(response.read())
        connection.close()
        still = running.post({"inputs": ["x"]})
    expected = {"not json": (400, "request body: not JSON"), "no inputs": (400, 'no list under "inputs"'),
                "a number": (400, "input 2: expected a string, a text; got a number"),
                "empty text": (400, "input 2: empty text"), "too many": (413, "inputs: 5 in one request, at most 4"),
                "elsewhere": (404, "no POST /predictions"), "get predict": (404, "no GET /predict"),
                "too big": (413, f"request body: {len(json.dumps({'inputs': ['a long enough body']}))} bytes, at "
                                 f"most 10"), "no length": (411, "no Content-Length")}
    for name, (status, body) in answers.items():
        assert status == expected[name][0], (name, body)
        assert expected[name][1] in body["error"] and "\n" not in body["error"], (name, body)
    assert still[0] == 200  # the server goes on after errors


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, image_folder, plain_checkpoint) -> Path:
    return trained_image_run(image_folder, plain_checkpoint, tmp_path_factory.mktemp("serve-image"), epochs=1)


def test_images_come_as_paths_or_data_urls(image_run, image_folder):
    files = sorted(image_folder.rglob("*.png"))[::9]
    inline = io.BytesIO()
    Image.open(files[0]).save(inline, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(inline.getvalue()).decode()
    with Running(image_run) as running:
        code, body = running.post({"inputs": [str(f) for f in files] + [url]})
        bad_url = running.post({"inputs": ["data:image/png;base64,AAAA"]})
        missing = running.post({"inputs": [str(image_folder / "missing.png")]})
        number = running.post({"inputs": [3]})
    predictor = graft.Predictor(image_run)
    assert code == 200
    same_rows(body["predictions"], predictor.predict([str(f) for f in files] + [Image.open(files[0])]), "image")
    assert body["predictions"][-1]["image"] is None and body["predictions"][0]["image"] == str(files[0])
    assert bad_url[0] == 400 and "input 1: a data: URL that is not a base64 image" in bad_url[1]["error"]
    assert missing[0] == 400 and "missing.png: not found" in missing[1]["error"]
    assert number[0] == 400 and "an image file's path or a data: URL" in number[1]["error"]


def test_a_port_in_use_and_bad_options_are_one_line(sources):
    with Running(sources["onnx"]) as running:
        port = running.server.server_address[1]
        assert "already in use" in error_of(make_server, sources["onnx"], port=port)
    assert "max_batch = 0" in error_of(make_server, sources["onnx"], port=0, max_batch=0)


def _default_sigint() -> None:
    """In the child before it starts: SIGINT back to its default. A test run started in the background by a
    non-interactive shell ignores SIGINT, children inherit that, and Python then installs no Ctrl-C handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_graft_serve_answers_then_stops_cleanly(sources, stop):
    command = [sys.executable, "-c", "from graft.cli import main; main()", "serve", str(sources["onnx"]), "--port", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(graft.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint)
    try:
        line = process.stderr.readline()
        assert line.startswith("serving onnx (text_classification, onnxruntime fp32) at http://127.0.0.1:"), line
        url = re.search(r" at (http://[\d.]+:\d+)", line)[1]
        with urllib.request.urlopen(f"{url}/health", timeout=60) as response:
            assert json.loads(response.read())["status"] == "ok"
        process.send_signal(stop)
        assert process.wait(timeout=60) == 0
        assert process.stderr.read().strip() == "stopped"
    finally:
        process.kill()
        process.stderr.close()
