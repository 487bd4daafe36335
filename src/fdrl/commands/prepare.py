"""``fdrl prepare <corpus> ... --out OUT``: turn a corpus into ``OUT/manifest.jsonl`` + ``labels.json``.

Sub-commands: ``iemocap`` (official release), ``manifest`` (your own CSV/JSONL),
``iemocap-features`` / ``features`` (a precomputed feature dump + transcripts),
``emodb`` and ``demo`` (a small synthetic corpus).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fdrl.errors import ConfigError

# The recipe of iemocap4_mel/mel64.npz: librosa log-mel, 64 bands, n_fft 2048, hop 512 at 16 kHz.
IEMOCAP_MEL_SPEC = {"name": "logmel", "sample_rate": 16000, "n_mels": 64, "n_fft": 2048,
                    "hop_length": 512}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare", help="build a manifest from a corpus",
        description="Turn a corpus into OUT/manifest.jsonl + OUT/labels.json, the input of every "
                    "later command.")
    sub = parser.add_subparsers(dest="corpus", metavar="CORPUS")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p = sub.add_parser("iemocap", help="an official IEMOCAP_full_release copy")
    p.add_argument("root", type=Path, help="the IEMOCAP_full_release folder (Session1 ... Session5)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--classes", type=int, choices=(4, 6), default=4, help="class set (default 4)")
    p.add_argument("--no-merge-excited", dest="merge_excited", action="store_false",
                   help="4-class: keep 'exc' as its own class instead of merging it into 'hap'")
    p.set_defaults(func=_iemocap)

    p = sub.add_parser("manifest", help="your own corpus as CSV/TSV/JSONL")
    p.add_argument("file", type=Path, help="table with label and audio/features/text columns")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--label-map", metavar="MAP", default=None,
                   help="rename labels: 'a=b,c=d' ('x=' drops x) or a JSON/YAML file")
    p.add_argument("--corpus", metavar="NAME", default=None, help="corpus name (default: file stem)")
    p.set_defaults(func=_manifest)

    for name, help_text, corpus, spec in (
        ("iemocap-features", "the IEMOCAP log-mel dump (mel64.npz) + transcripts", "iemocap", IEMOCAP_MEL_SPEC),
        ("features", "any precomputed feature store (.npz) + optional transcripts", None, None),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("npz", type=Path, help="feature store (.npz)")
        p.add_argument("--transcripts", type=Path, required=name == "iemocap-features",
                       help="JSONL with utt_id, text, label and metadata")
        p.add_argument("--out", type=Path, required=True, help="output folder")
        p.add_argument("--require-text", action="store_true",
                       help="drop utterances without a transcript")
        p.add_argument("--corpus", metavar="NAME", default=corpus, help="corpus name")
        p.add_argument("--features-spec", metavar="JSON", default=None,
                       help="how the features were computed, as JSON or a JSON file"
                            + (f" (default: {json.dumps(spec)})" if spec else ""))
        p.set_defaults(func=_features, default_spec=spec)

    p = sub.add_parser("emodb", help="EmoDB folder with labels.csv")
    p.add_argument("root", type=Path, help="folder holding labels.csv and the wavs")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_emodb)

    p = sub.add_parser("demo", help="a small synthetic bimodal corpus (no download)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-utterances", type=int, default=800)
    p.set_defaults(func=_demo)


def _summary(path: Path) -> int:
    """Print 'N utterances (a: n, b: m) -> path' for a written manifest."""
    from fdrl.data.manifest import read_manifest

    manifest = read_manifest(path)
    counts = {c: 0 for c in manifest.classes}
    for r in manifest.rows:
        counts[r["label"]] += 1
    per_class = ", ".join(f"{c}: {n}" for c, n in counts.items())
    print(f"{len(manifest)} utterances ({per_class}) -> {manifest.root / 'manifest.jsonl'}")
    return 0


def _iemocap(args: argparse.Namespace) -> int:
    from fdrl.data.iemocap import prepare_iemocap

    return _summary(prepare_iemocap(args.root, args.out, classes=args.classes,
                                    merge_excited=args.merge_excited))


def _manifest(args: argparse.Namespace) -> int:
    from fdrl.data.custom import parse_label_map, prepare_custom

    return _summary(prepare_custom(args.file, args.out, label_map=parse_label_map(args.label_map),
                                   corpus=args.corpus))


def _parse_spec(value: str | None, default: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return dict(default) if default else None
    text = value
    if not value.lstrip().startswith("{"):  # a file name, not inline JSON
        if not Path(value).is_file():
            raise ConfigError(f"--features-spec: {value} is neither a JSON object nor an existing file")
        text = Path(value).read_text(encoding="utf-8")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--features-spec: not JSON nor a JSON file ({exc.msg}): {value[:80]}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"--features-spec must be a JSON object, got {type(spec).__name__}")
    return spec


def _features(args: argparse.Namespace) -> int:
    from fdrl.data.featstore import prepare_feature_dump

    spec = _parse_spec(args.features_spec, args.default_spec)
    return _summary(prepare_feature_dump(args.npz, args.transcripts, out=args.out, encoder_spec=spec,
                                         corpus=args.corpus, require_text=args.require_text))


def _emodb(args: argparse.Namespace) -> int:
    from fdrl.data.emodb import prepare_emodb

    return _summary(prepare_emodb(args.root, args.out))


def _demo(args: argparse.Namespace) -> int:
    from fdrl.data.demo import generate_demo

    path = Path(generate_demo(args.out, seed=args.seed, n_utterances=args.n_utterances))
    return _summary(path)
