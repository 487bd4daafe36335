"""The HTTP service: good requests, every kind of bad request (4xx with a JSON error,
never a 500), concurrency, through FastAPI's TestClient and a real uvicorn server."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from fdrl.cli import main
from fdrl.inference.serve import Limits, create_app
from tests.inference import demo_bundle, demo_predictor, demo_rows, probs

LIMITS = Limits(max_upload_mb=0.25, max_seconds=5.0, formats=("WAV", "FLAC", "OGG"))


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return demo_predictor(tmp_path_factory)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return demo_rows(tmp_path_factory)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, LIMITS), raise_server_exceptions=False) as c:
        yield c


def _wav_bytes(seconds: float, sr: int = 16000, fmt: str = "WAV", subtype: str | None = "PCM_16",
               silent: bool = False) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    x = np.zeros_like(t) if silent else 0.3 * np.sin(2 * np.pi * 220 * t)
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _multipart(client, audio: bytes | None, text: str | None = "hello", name="a.wav", **kw):
    files = {"audio": (name, audio, "audio/wav")} if audio is not None else None
    data = {"text": text} if text is not None else None
    return client.post("/predict", files=files, data=data, **kw)


def test_health_and_openapi(client, predictor):
    r = client.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["model"] == "fdrl" and h["classes"] == predictor.classes
    assert h["version"] and h["limits"]["max_seconds"] == 5.0
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "audio" in body["multipart/form-data"]["schema"]["properties"]


def test_predict_multipart_and_json_agree_with_the_library(client, predictor, rows):
    row = rows[4]
    with open(row["audio"], "rb") as fh:
        data = fh.read()
    expected = predictor.predict(audio=row["audio"], text=row["text"])
    r = _multipart(client, data, row["text"])
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["label"] == expected["label"]
    np.testing.assert_allclose(probs(got, predictor.classes), probs(expected, predictor.classes),
                               atol=1e-6)
    r = client.post("/predict", json={"audio_base64": base64.b64encode(data).decode(),
                                      "text": row["text"]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(probs(r.json(), predictor.classes),
                               probs(expected, predictor.classes), atol=1e-6)
    r = _multipart(client, data, row["text"], params={"embeddings": "true"})
    assert r.status_code == 200 and "fused" in r.json()["embeddings"]
    # other accepted formats: FLAC and OGG
    for fmt, subtype in (("FLAC", "PCM_16"), ("OGG", "VORBIS")):
        r = _multipart(client, _wav_bytes(1.0, fmt=fmt, subtype=subtype), name=f"a.{fmt.lower()}")
        assert r.status_code == 200, (fmt, r.text)


BAD_REQUESTS = {
    # name: (request kwargs builder, expected status, words in the error)
    "corrupt file": (lambda: {"files": {"audio": ("a.wav", b"RIFF1234WAVEjunk" * 50)},
                              "data": {"text": "x"}}, 415, "not a readable sound file"),
    "random bytes": (lambda: {"files": {"audio": ("a.wav", bytes(range(256)) * 8)},
                              "data": {"text": "x"}}, 415, "allowed formats"),
    "format not allowed": (lambda: {"files": {"audio": ("a.aiff", _wav_bytes(1.0, fmt="AIFF"))},
                                    "data": {"text": "x"}}, 415, "aiff"),
    "truncated wav": (lambda: {"files": {"audio": ("a.wav", _wav_bytes(1.0)[:-8000])},
                               "data": {"text": "x"}}, 422, "truncated"),
    "silent audio": (lambda: {"files": {"audio": ("a.wav", _wav_bytes(1.0, silent=True))},
                              "data": {"text": "x"}}, 422, "silent"),
    "empty file": (lambda: {"files": {"audio": ("a.wav", b"")}, "data": {"text": "x"}}, 422, "empty"),
    "too long": (lambda: {"files": {"audio": ("a.wav", _wav_bytes(6.0, sr=8000))},
                          "data": {"text": "x"}}, 413, "longer than the limit of 5 s"),
    "too large": (lambda: {"files": {"audio": ("a.wav", _wav_bytes(4.0, sr=48000))},
                           "data": {"text": "x"}}, 413, "larger than the limit"),
    "missing audio": (lambda: {"files": {"other": ("a.wav", _wav_bytes(1.0))},
                               "data": {"text": "x"}}, 422, "missing field 'audio'"),
    "audio as a text field": (lambda: {"files": {"z": ("a.wav", b"1")}, "data": {"audio": "abc"}},
                              422, "must be a file"),
    "missing text": (lambda: {"files": {"audio": ("a.wav", _wav_bytes(1.0))}}, 422,
                     "missing field 'text'"),
    "wrong content type": (lambda: {"content": b"hello", "headers": {"content-type": "text/plain"}},
                           415, "content type 'text/plain'"),
    "no content type": (lambda: {"content": b"hello"}, 415, "content type"),
    "json not an object": (lambda: {"json": [1, 2]}, 422, "must be an object"),
    "json missing audio": (lambda: {"json": {"text": "x"}}, 422, "audio_base64"),
    "json bad base64": (lambda: {"json": {"audio_base64": "@@not base64@@", "text": "x"}}, 400,
                        "not valid base64"),
    "json text not a string": (lambda: {"json": {"audio_base64": base64.b64encode(
        _wav_bytes(1.0)).decode(), "text": 5}}, 422, "'text' must be a string"),
    "invalid json": (lambda: {"content": b"{oops", "headers": {"content-type": "application/json"}},
                     400, "not valid JSON"),
    "multipart without boundary": (lambda: {"content": b"--xx\r\ngarbage", "headers": {
        "content-type": "multipart/form-data"}}, 400, "missing boundary"),
    "multipart part without name": (lambda: {"content": b"--xx\r\nContent-Disposition: "
                                             b"form-data\r\n\r\nabc\r\n--xx--\r\n", "headers": {
        "content-type": "multipart/form-data; boundary=xx"}}, 400, "malformed multipart"),
    "multipart cut short": (lambda: {"content": b"--xx\r\ngarbage", "headers": {
        "content-type": "multipart/form-data; boundary=xx"}}, 422, "missing field 'audio'"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_4xx_json_errors(client, case):
    build, status, words = BAD_REQUESTS[case]
    r = client.post("/predict", **build())
    assert r.status_code == status, (case, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert words.lower() in r.json()["error"].lower(), r.json()


def test_unknown_paths_and_methods_are_json_errors(client):
    r = client.get("/nope")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/predict")
    assert r.status_code == 405 and "error" in r.json()
    r = client.post("/predict", params={"embeddings": "maybe"}, json={"audio_base64": ""})
    assert r.status_code == 422 and "embeddings" in r.json()["error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(predictor):
    """A real uvicorn server on a free loopback port, in a thread."""
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(create_app(predictor, LIMITS), host="127.0.0.1", port=port,
                            log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_real_server_handles_concurrent_requests(server, predictor, rows):
    picked = rows[:8]
    payloads = []
    for r in picked:
        with open(r["audio"], "rb") as fh:
            payloads.append((fh.read(), r["text"]))
    expected = [predictor.predict(audio=r["audio"], text=r["text"]) for r in picked]

    def post(p):
        with httpx.Client(base_url=server, timeout=60) as c:
            return c.post("/predict", files={"audio": ("a.wav", p[0], "audio/wav")},
                          data={"text": p[1]})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, payloads))
    for ans, exp in zip(answers, expected):
        assert ans.status_code == 200, ans.text
        np.testing.assert_allclose(probs(ans.json(), predictor.classes),
                                   probs(exp, predictor.classes), atol=1e-5)
    with httpx.Client(base_url=server, timeout=60) as c:
        assert c.get("/health").json()["status"] == "ok"
        bad = c.post("/predict", files={"audio": ("a.wav", b"junk" * 100)}, data={"text": "x"})
        assert bad.status_code == 415 and "error" in bad.json()
        big = c.post("/predict", content=b"0" * (LIMITS.max_body_bytes + 1),
                     headers={"content-type": "application/json"})
        assert big.status_code == 413 and "error" in big.json()


def test_serve_command_runs_uvicorn_with_the_limits(tmp_path_factory, monkeypatch, rows):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    bundle = demo_bundle(tmp_path_factory)
    assert main(["serve", "--model", str(bundle), "--port", "8123", "--max-seconds", "2",
                 "--max-upload-mb", "1"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    with TestClient(seen["app"]) as c:
        limits = c.get("/health").json()["limits"]
        assert limits["max_seconds"] == 2.0 and limits["max_upload_mb"] == 1.0
        with open(rows[0]["audio"], "rb") as fh:
            ok = c.post("/predict", files={"audio": ("a.wav", fh.read())}, data={"text": "hi"})
        assert ok.status_code == (200 if rows[0]["duration"] <= 2.0 else 413), ok.text
        r = c.post("/predict", files={"audio": ("a.wav", _wav_bytes(2.5))}, data={"text": "x"})
        assert r.status_code == 413


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile without MP3")
def test_mp3_is_accepted_only_when_allowed(predictor):
    from fdrl.inference.serve import default_formats

    mp3 = _wav_bytes(1.0, fmt="MP3", subtype="MPEG_LAYER_III")
    assert "MP3" in default_formats()
    with TestClient(create_app(predictor, Limits(formats=default_formats()))) as c:
        r = c.post("/predict", files={"audio": ("a.mp3", mp3)}, data={"text": "x"})
        assert r.status_code == 200, r.text
    with TestClient(create_app(predictor, LIMITS)) as c:
        r = c.post("/predict", files={"audio": ("a.mp3", mp3)}, data={"text": "x"})
        assert r.status_code == 415 and "mp3" in r.json()["error"]
