"""``fdrl predict`` (one utterance, or a manifest in resumable batches) and ``fdrl serve``.

Batch output (``--out preds.jsonl``) is appended a chunk at a time: every chunk is
written with one ``write`` of whole lines, then flushed and fsynced. A run that is
killed loses at most the chunk in flight; the next run drops a trailing partial
line, skips every ``utt_id`` already in the file and predicts the rest.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path

from fdrl.data.manifest import json_lines
from fdrl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: manifest columns read by ``fdrl predict --manifest``
INPUT_KEYS = ("utt_id", "audio", "text", "features")


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
    raw: list[tuple[int, dict]] = []
    with open(path, encoding="utf-8", newline="") as fh:
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


def _done_ids(out: Path) -> set[str]:
    """utt_ids already in ``out``; a trailing partial line (a kill mid-write) is cut off."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: dropping an incomplete last line (%d bytes) left by an interrupted run",
                    out, len(data) - end)
        with open(out, "rb+") as fh:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
    done = set()
    for lineno, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            done.add(str(json.loads(line)["utt_id"]))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{out}:{lineno}: not a prediction line (expected JSON with 'utt_id'); "
                            f"is --out the right file?") from None
    return done


def _append(out: Path, results: list[dict]) -> None:
    """Append whole lines in one write, then fsync: a chunk is on disk or (partly) cut off."""
    if not results:
        return
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    with open(out, "ab") as fh:
        fh.write(text.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


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
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_ids(out)
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
    from fdrl.inference.predict import load

    if args.manifest:
        if not args.out:
            raise ConfigError("--manifest needs --out FILE.jsonl for the predictions")
        if args.audio or args.text is not None or args.features:
            raise ConfigError("use either --manifest or --audio/--text/--features, not both")
    elif args.audio is None and args.text is None and args.features is None:
        raise ConfigError("nothing to predict: pass --audio FILE and/or --text \"...\", or "
                          "--manifest FILE --out preds.jsonl")
    predictor = load(args.model, device=args.device, asr=args.asr, asr_language=args.asr_language)
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
