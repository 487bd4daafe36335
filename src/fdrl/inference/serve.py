"""The HTTP service (``fdrl serve``): a FastAPI app around a :class:`Predictor`.

Endpoints
---------
``POST /predict``
    multipart/form-data with a file field ``audio`` and a form field ``text``, or a
    JSON body ``{"audio_base64": "...", "text": "..."}``. Returns the JSON of
    ``fdrl predict``: ``{"label", "probabilities", ["transcript"], ["embeddings"]}``
    (``?embeddings=true`` adds the representations).
``GET /health``
    model name, classes, modalities, versions and the limits.
``GET /openapi.json``, ``GET /docs``
    FastAPI's schema and its interactive page.

Every bad request gets a 4xx answer with a JSON body ``{"error": "..."}``, never a 500:

====  ================================================================
400   malformed body (bad JSON, bad base64, broken multipart)
404   unknown path; 405 wrong method
413   upload larger than ``max_upload_mb``, audio longer than ``max_seconds``
415   wrong content type, or a file that is not audio in an allowed format
422   a required field is missing or has the wrong type; audio that decodes
      but is unusable (truncated, silent, too short)
====  ================================================================

Requests are handled concurrently; the model itself runs one call at a time (the
predictor holds a lock), on a worker thread so the event loop stays responsive.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fdrl import __version__
from fdrl.errors import BundleError, DataError, FdrlError

log = logging.getLogger(__name__)

#: container formats accepted by default (libsndfile names); MP3 when libsndfile reads it
BASE_FORMATS = ("WAV", "FLAC", "OGG")


def default_formats() -> tuple[str, ...]:
    import soundfile as sf

    return BASE_FORMATS + (("MP3",) if "MP3" in sf.available_formats() else ())


@dataclass
class Limits:
    """What the service accepts.

    max_upload_mb : largest audio file (MB = 2**20 bytes); a JSON body may be 4/3 of
        it plus some slack (base64).
    max_seconds : longest audio, read from the file header before decoding.
    formats : allowed containers (libsndfile names: "WAV", "FLAC", "OGG", "MP3").
    max_text_chars : longest transcript.
    """

    max_upload_mb: float = 20.0
    max_seconds: float = 30.0
    formats: tuple[str, ...] = BASE_FORMATS
    max_text_chars: int = 10_000

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        # base64 inflates by 4/3; multipart headers and the text field need a little more
        return self.max_upload_bytes * 4 // 3 + 4 * self.max_text_chars + 64 * 1024


class HTTPError(Exception):
    """An answer with a status code and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------- request parsing


async def _read_body(request, limits: Limits) -> bytes:
    """The whole body, refusing (413) as soon as it exceeds the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limits.max_body_bytes:
                raise HTTPError(413, f"request body of {int(declared)} bytes is larger than the "
                                     f"limit ({limits.max_upload_mb:g} MB of audio)")
        except ValueError:
            raise HTTPError(400, "invalid Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise HTTPError(413, f"request body is larger than the limit "
                                 f"({limits.max_upload_mb:g} MB of audio)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_multipart(request, body: bytes, limits: Limits) -> tuple[bytes, Any]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=4, max_fields=16,
                             max_part_size=4 * limits.max_text_chars + 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPError(400, f"malformed multipart body ({exc.message})") from None
    except Exception as exc:  # any other parser failure is still the body's fault
        raise HTTPError(400, f"malformed multipart body ({type(exc).__name__})") from None
    try:
        audio = form.get("audio")
        if audio is None:
            raise HTTPError(422, "missing field 'audio' (a file part with the sound file)")
        if not isinstance(audio, UploadFile):
            raise HTTPError(422, "field 'audio' must be a file upload, not a text field")
        data = await audio.read()
        text = form.get("text")
        if isinstance(text, UploadFile):
            text = (await text.read()).decode("utf-8", errors="replace")
        return data, text
    finally:
        await form.close()


def _parse_json(body: bytes) -> tuple[bytes, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"body is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise HTTPError(422, "JSON body must be an object {\"audio_base64\": ..., \"text\": ...}")
    b64 = doc.get("audio_base64")
    if b64 is None:
        raise HTTPError(422, "missing field 'audio_base64' (the sound file, base64-encoded)")
    if not isinstance(b64, str):
        raise HTTPError(422, "field 'audio_base64' must be a string")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(400, "field 'audio_base64' is not valid base64") from None
    return data, doc.get("text")


def _check_audio(data: bytes, limits: Limits) -> None:
    """Size, format and duration from the header, before any decoding."""
    import soundfile as sf

    if len(data) > limits.max_upload_bytes:
        raise HTTPError(413, f"audio file of {len(data)} bytes is larger than the limit of "
                             f"{limits.max_upload_mb:g} MB")
    if not data:
        raise HTTPError(422, "audio file is empty (0 bytes)")
    allowed = ", ".join(f.lower() for f in limits.formats)
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # libsndfile: not a sound file it knows, or a broken header
        raise HTTPError(415, f"audio is not a readable sound file (allowed formats: {allowed})") from None
    if info.format not in limits.formats:
        raise HTTPError(415, f"audio format {info.format.lower()} is not accepted (allowed: {allowed})")
    if info.samplerate > 0 and info.frames / info.samplerate > limits.max_seconds:
        raise HTTPError(413, f"audio is {info.frames / info.samplerate:.1f} s long, longer than the "
                             f"limit of {limits.max_seconds:g} s")


# ----------------------------------------------------------------------------- app


class Prediction(BaseModel):
    """The answer of POST /predict (the JSON of `fdrl predict`)."""

    label: str
    probabilities: dict[str, float]
    transcript: str | None = None
    embeddings: dict[str, list[float]] | None = None


class Error(BaseModel):
    """Every 4xx answer."""

    error: str


class Health(BaseModel):
    """The answer of GET /health."""

    status: str
    model: str
    bundle: str
    classes: list[str]
    modalities: list[str]
    version: str
    bundle_version: str | None = None
    asr: dict | None = None
    limits: dict


def create_app(predictor, limits: Limits | None = None):
    """Build the FastAPI app serving ``predictor`` (a :class:`~fdrl.inference.predict.Predictor`).

    Raises
    ------
    BundleError
        The bundle cannot score audio (precomputed features without a compute spec).
    """
    limits = limits or Limits(formats=default_formats())
    if not predictor.accepts_audio:
        raise BundleError(f"{predictor.bundle.path}: the bundle scores precomputed speech features "
                          f"only (no 'compute' spec), so it cannot be served for audio uploads")
    info = predictor.info()

    app = FastAPI(title="fdrl emotion recognition", version=__version__,
                  description=f"Model {info['model']} ({info['bundle']}); classes: "
                              f"{', '.join(info['classes'])}.")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):  # 404, 405 ... as {"error"}
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # a bug: say so without leaking a traceback
        log.exception("unexpected error while handling %s", request.url.path)
        return error(500, f"internal error ({type(exc).__name__})")

    @app.get("/health", response_model=Health)
    def health() -> dict:
        return {"status": "ok", "model": info["model"], "bundle": info["bundle"],
                "classes": info["classes"], "modalities": info["modalities"],
                "version": __version__, "bundle_version": info["bundle_fdrl_version"],
                "asr": info["asr"], "limits": {**asdict(limits), "formats": list(limits.formats)}}

    errors = {s: {"model": Error, "description": d} for s, d in (
        (400, "malformed body"), (413, "audio too large or too long"),
        (415, "wrong content type or audio format"), (422, "missing or invalid field"))}
    body_schema = {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["audio"],
                "properties": {"audio": {"type": "string", "format": "binary",
                                         "description": "sound file (wav, flac, ogg, mp3)"},
                               "text": {"type": "string", "description": "the transcript"}}}},
            "application/json": {"schema": {
                "type": "object", "required": ["audio_base64"],
                "properties": {"audio_base64": {"type": "string",
                                                "description": "sound file, base64-encoded"},
                               "text": {"type": "string", "description": "the transcript"}}}},
        },
    }

    def run_model(data: bytes, text: str | None, embeddings: bool) -> dict:
        from fdrl.data.audio import decode_audio_bytes

        try:
            wave = decode_audio_bytes(data, 16000, predictor.max_seconds, predictor.min_samples,
                                      name="uploaded audio")
            return predictor.predict(audio=wave, sr=16000, text=text, embeddings=embeddings)
        except (DataError, BundleError) as exc:  # unusable audio / input the bundle cannot score
            raise HTTPError(422, str(exc)) from None

    @app.post("/predict", response_model=Prediction, response_model_exclude_none=True,
              responses=errors, openapi_extra={"requestBody": body_schema},
              summary="Classify the emotion of one utterance")
    async def predict(request: Request, embeddings: bool = False):
        try:
            ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
            if ctype not in ("multipart/form-data", "application/json"):
                raise HTTPError(415, f"content type '{ctype or 'none'}' is not accepted; send "
                                     f"multipart/form-data (file 'audio', field 'text') or "
                                     f"application/json ({{\"audio_base64\", \"text\"}})")
            body = await _read_body(request, limits)
            if ctype == "application/json":
                data, text = _parse_json(body)
            else:
                data, text = await _parse_multipart(request, body, limits)
            if text is not None and not isinstance(text, str):
                raise HTTPError(422, "field 'text' must be a string")
            if text is not None and len(text) > limits.max_text_chars:
                raise HTTPError(413, f"text is {len(text)} characters long, longer than the limit "
                                     f"of {limits.max_text_chars}")
            if text is None and predictor.needs_text:
                raise HTTPError(422, "missing field 'text' (the transcript); this model reads text "
                                     "and the service runs without ASR (start it with --asr MODEL "
                                     "to transcribe uploads)")
            _check_audio(data, limits)
            return await run_in_threadpool(run_model, data, text, embeddings)
        except HTTPError as exc:
            return error(exc.status, exc.message)
        except FdrlError as exc:
            return error(422, str(exc))

    return app


def serve(predictor, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
          log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(predictor, limits), host=host, port=port, log_level=log_level)
