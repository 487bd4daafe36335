"""``fdrl predict`` (one utterance, or a manifest in resumable batches) and ``fdrl serve``.

Batch output (``--out preds.jsonl``) is appended a chunk at a time: every chunk is
written with one ``write`` of whole lines, then flushed and fsynced. A run that is
killed loses at most the chunk in flight; the next run drops a trailing partial
line, skips every ``utt_id`` already in the file and predicts the rest.

Every line carries two fingerprints: ``bundle_fingerprint`` (the bundle's
``bundle.json`` and weights, see :attr:`Predictor.fingerprint`) and
``input_fingerprint`` (the row's text, and size and modification time of its audio /
features file). A resume that would mix predictions of another bundle, or of inputs
that changed since, is refused (one line, nothing written): predict into a new
``--out``. An existing ``--out`` that is not such a file is refused the same way,
before anything in it is changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import sys
from pathlib import Path

from fdrl.data.manifest import json_lines, unicode_problem
from fdrl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: manifest columns read by ``fdrl predict --manifest``
INPUT_KEYS = ("utt_id", "audio", "text", "features")
#: how every line written by ``fdrl predict --out`` begins (json.dumps of the result)
LINE_START = b'{"utt_id": '


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict emotions with a model bundle",
                       description="One utterance (--audio/--text; prints JSON) or a whole manifest "
                                   "(--manifest/--out; JSON lines, resumable).")
    p.add_argument("--model", required=True, metavar="BUNDLE", help="a bundle folder (fdrl train / export)")
    p.add_argument("--audio", help="sound file of one utterance")
    p.add_argument("--text", help="transcript of that utterance")
    p.add_argument("--features", help="precomputed (frames, d) .npy features, for bundles trained on "
                                      "precomputed features")
    p.add_argument("--manifest", help="JSONL (or CSV) rows with utt_id and audio / text / features; "
                                      "relative paths are resolved against its folder")
    p.add_argument("--out", help="with --manifest: JSON-lines output, resumed if it exists")
    p.add_argument("--batch-size", type=int, default=16, help="utterances per model call (16)")
    p.add_argument("--skip-bad", action="store_true",
                   help="record unusable rows as {utt_id, error} and go on, instead of stopping")
    p.add_argument("--asr", metavar="MODEL",
                   help="transcribe audio without text with this ASR model (hub id or folder, "
                        "e.g. openai/whisper-small)")
    p.add_argument("--asr-language", help="Whisper: spoken language, e.g. en (default: detect)")
    p.add_argument("--embeddings", action="store_true", help="also output the representations")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    s = sub.add_parser("serve", help="serve a model bundle over HTTP (FastAPI + uvicorn)",
                       description="POST /predict (multipart file 'audio' + field 'text', or JSON "
                                   "{audio_base64, text}), GET /health, GET /docs.")
    s.add_argument("--model", required=True, metavar="BUNDLE", help="a bundle folder")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (8000)")
    s.add_argument("--max-upload-mb", type=float, default=20.0, help="largest audio file (20 MB)")
    s.add_argument("--max-seconds", type=float, default=30.0, help="longest audio (30 s)")
    s.add_argument("--asr", metavar="MODEL", help="transcribe uploads that come without text")
    s.add_argument("--asr-language", help="Whisper: spoken language (default: detect)")
    s.add_argument("--device", default="cpu", help="torch device")
    s.set_defaults(func=cmd_serve)


# ----------------------------------------------------------------------------- predict


def read_inputs(path: str | Path) -> list[dict]:
    """Rows to predict from a JSONL or CSV file (or a prepared corpus folder).

    Each row needs a unique ``utt_id`` and the inputs the bundle reads (``audio``,
    ``text``, ``features``); other keys are ignored. Relative ``audio`` / ``features``
    paths are resolved against the file's folder.

    Raises
    ------
    DataError
        Naming the file and line: not found, invalid JSON, no/duplicate ``utt_id``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        f"re-save it as UTF-8") from None
    fh = io.StringIO(text, newline="")
    if path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        raw = [(n + 2, {k: (v if v != "" else None) for k, v in row.items()})
               for n, row in enumerate(reader)]
    else:
        raw = list(json_lines(fh, path))
    rows, seen = [], set()
    for lineno, row in raw:
        utt = row.get("utt_id")
        if utt in (None, ""):
            raise DataError(f"{path}:{lineno}: field 'utt_id' is missing or empty (it keys the "
                            f"output and the resume)")
        utt = str(utt)
        if unicode_problem(utt) is not None:
            raise DataError(f"{path}:{lineno}: utt_id {utt!r} is not valid Unicode text "
                            f"({unicode_problem(utt)}); it keys the output: fix it")
        if utt in seen:
            raise DataError(f"{path}:{lineno}: duplicate utt_id '{utt}'")
        seen.add(utt)
        item = {"utt_id": utt, "text": row.get("text"), "line": lineno}
        for key in ("audio", "features"):
            if row.get(key):
                ref = str(row[key])
                base = ref.split("#", 1)[0]
                item[key] = ref if os.path.isabs(base) else str(path.parent / ref)
        rows.append(item)
    if not rows:
        raise DataError(f"{path}: no rows to predict")
    return rows


def input_fingerprint(row: dict) -> str:
    """sha256 (first 16 hex digits) of what a row's prediction reads: its text, and the
    size and modification time (ns) of its audio / features file ("missing" if none)."""
    parts: list = []
    for key in ("audio", "features"):
        ref = row.get(key)
        if not ref:
            continue
        base, _, member = str(ref).partition("#") if key == "features" else (str(ref), "", "")
        try:
            st = os.stat(base)
            parts.append([key, member, st.st_size, st.st_mtime_ns])
        except (OSError, ValueError):  # missing, or a name the OS cannot take
            parts.append([key, member, "missing"])
    parts.append(["text", row.get("text")])
    return hashlib.sha256(json.dumps(parts).encode("ascii")).hexdigest()[:16]


def _line_of(data: bytes, offset: int) -> int:
    """1-based line number of byte ``offset``."""
    return data.count(b"\n", 0, offset) + 1


def _not_predictions(out: Path, where: str, what: str) -> DataError:
    return DataError(f"{where}: {what}; --out {out} is not a predictions file of `fdrl predict` "
                     f"(left unchanged): choose a new --out")


def _read_done(out: Path) -> tuple[dict[str, tuple[int, str, str]], int | None]:
    """The predictions already in ``out``, checked, without changing the file.

    Returns
    -------
    ``{utt_id: (line, bundle_fingerprint, input_fingerprint)}``, and the length to cut
    the file to when its last line was cut off by a kill (None when it is whole).

    Raises
    ------
    DataError
        ``out`` is a folder, not UTF-8, or holds a line that ``fdrl predict`` does not
        write (then nothing may be appended to it, nor cut off).
    """
    if not out.exists():
        return {}, None
    if not out.is_file():
        kind = "is a folder" if out.is_dir() else "is not a regular file"
        raise DataError(f"--out {out}: {kind}; expected a JSON-lines file for the predictions")
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    tail = data[end:]
    try:
        text = data[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_predictions(out, f"{out}:{_line_of(data, exc.start)}",
                               "not UTF-8 text") from None
    done: dict[str, tuple[int, str, str]] = {}
    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            ok = (isinstance(r, dict) and isinstance(r.get("utt_id"), str)
                  and ("error" in r or "probabilities" in r))
        except ValueError:
            ok = False
        if not ok:
            raise _not_predictions(out, f"{out}:{lineno}", "not a prediction line (JSON with "
                                   "'utt_id' and 'probabilities' or 'error')")
        fps = r.get("bundle_fingerprint"), r.get("input_fingerprint")
        if not all(isinstance(f, str) for f in fps):
            raise DataError(f"{out}:{lineno}: prediction line without bundle and input "
                            f"fingerprints (written by an older fdrl): cannot tell whether it "
                            f"matches this bundle and these inputs; choose a new --out")
        done[r["utt_id"]] = (lineno, *fps)
    # a line cut off by a kill is the beginning of a line this command writes
    if tail and not (tail.startswith(LINE_START) or LINE_START.startswith(tail)):
        raise _not_predictions(out, f"{out}:{_line_of(data, end)}",
                               "the last line is neither a prediction line nor the beginning "
                               "of one")
    return done, (end if tail else None)


def _check_resume(out: Path, done: dict, rows: list[dict], bundle_fp: str, manifest) -> None:
    """Refuse to add to predictions made by another bundle or from other inputs."""
    for utt, (lineno, bfp, _) in done.items():
        if bfp != bundle_fp:
            raise DataError(f"{out}:{lineno}: predicted with another model bundle (fingerprint "
                            f"{bfp}; --model gives {bundle_fp}); predictions of two bundles are "
                            f"not mixed in one file: choose a new --out")
    for row in rows:
        if row["utt_id"] in done:
            lineno, _, ifp = done[row["utt_id"]]
            if ifp != row["fingerprint"]:
                raise DataError(f"{out}:{lineno}: utterance '{row['utt_id']}' was predicted from "
                                f"other input (its text, audio or features file changed since; "
                                f"{manifest}:{row['line']}); choose a new --out to predict "
                                f"again")


def _append(out: Path, results: list[dict]) -> None:
    """Append whole lines in one write, then fsync: a chunk is on disk or (partly) cut off."""
    if not results:
        return
    text = "".join(_line(r) for r in results)
    with open(out, "ab") as fh:
        fh.write(text.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def _line(result: dict) -> str:
    line = json.dumps(result, ensure_ascii=False)
    if unicode_problem(line) is not None:  # e.g. an error message quoting bad text
        line = json.dumps(result)  # \ud800 escapes: still JSON, and UTF-8
    return line + "\n"


def predict_manifest(predictor, manifest: str | Path, out: str | Path, batch_size: int = 16,
                     skip_bad: bool = False, embeddings: bool = False,
                     progress: bool = True) -> dict:
    """Predict every row of ``manifest`` not yet in ``out``; append results chunk by chunk.

    Returns
    -------
    Counts: ``rows``, ``skipped`` (already done), ``predicted``, ``bad``.

    Raises
    ------
    FdrlError
        The first bad row when not ``skip_bad`` (naming its line and utt_id); what was
        predicted before it is already in ``out``.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    out = Path(out)
    rows = read_inputs(manifest)
    if out.exists() and out.resolve() == Path(manifest).resolve():
        raise DataError(f"--out {out} is the --manifest file; write the predictions to a new file")
    # check everything before anything is changed: a foreign --out, another bundle,
    # changed inputs are refused with the file as it was
    done, cut = _read_done(out)
    bundle_fp = predictor.fingerprint
    for row in rows:
        row["fingerprint"] = input_fingerprint(row)
    _check_resume(out, done, rows, bundle_fp, manifest)
    if cut is not None:
        log.warning("%s: dropping an incomplete last line (%d bytes) left by an interrupted run",
                    out, out.stat().st_size - cut)
        with open(out, "rb+") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
    out.parent.mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if r["utt_id"] not in done]
    counts = {"rows": len(rows), "skipped": len(rows) - len(todo), "predicted": 0, "bad": 0}
    bar = tqdm(total=len(todo), unit="utt", desc="predict", disable=None if progress else True,
               dynamic_ncols=True)
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            # always isolate bad rows, so the good rows before a bad one are kept
            results = predictor.predict_batch(chunk, batch_size=batch_size, progress=False,
                                              embeddings=embeddings, skip_bad=True)
            keep = []
            for row, res in zip(chunk, results):
                res.update(bundle_fingerprint=bundle_fp, input_fingerprint=row["fingerprint"])
                if "error" in res:
                    if not skip_bad:
                        _append(out, keep)
                        counts["predicted"] += len(keep)
                        raise DataError(f"{manifest}:{row['line']}: {res['error']} (use --skip-bad "
                                        f"to record bad rows and go on)")
                    counts["bad"] += 1
                else:
                    counts["predicted"] += 1
                keep.append(res)
            _append(out, keep)
            bar.update(len(chunk))
    finally:
        bar.close()
    return counts


def cmd_predict(args) -> int:
    from fdrl.inference.predict import check_text, load

    if args.manifest:
        if not args.out:
            raise ConfigError("--manifest needs --out FILE.jsonl for the predictions")
        if args.audio or args.text is not None or args.features:
            raise ConfigError("use either --manifest or --audio/--text/--features, not both")
    elif args.audio is None and args.text is None and args.features is None:
        raise ConfigError("nothing to predict: pass --audio FILE and/or --text \"...\", or "
                          "--manifest FILE --out preds.jsonl")
    if args.text is not None and unicode_problem(args.text) is not None:
        raise DataError(f"--text: not valid UTF-8 ({unicode_problem(args.text)}); pass the "
                        f"transcript as UTF-8 text")
    predictor = load(args.model, device=args.device, asr=args.asr, asr_language=args.asr_language)
    if args.text is not None and predictor.text_encoder is not None:
        check_text(args.text, "--text")
    if args.manifest:
        c = predict_manifest(predictor, args.manifest, args.out, args.batch_size, args.skip_bad,
                             args.embeddings, progress=not args.quiet)
        print(f"{c['rows']} rows: {c['skipped']} already in {args.out}, {c['predicted']} predicted, "
              f"{c['bad']} bad", file=sys.stderr)
        return 0
    result = predictor.predict(audio=args.audio, text=args.text, features=args.features,
                               embeddings=args.embeddings)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


# ----------------------------------------------------------------------------- serve


def cmd_serve(args) -> int:
    from fdrl.inference.predict import load
    from fdrl.inference.serve import Limits, default_formats, serve

    if args.max_upload_mb <= 0 or args.max_seconds <= 0:
        raise ConfigError("--max-upload-mb and --max-seconds must be positive")
    predictor = load(args.model, device=args.device, asr=args.asr, asr_language=args.asr_language)
    limits = Limits(max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds,
                    formats=default_formats())
    serve(predictor, host=args.host, port=args.port, limits=limits)
    return 0
