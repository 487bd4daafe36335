"""``fdrl features DATA``: encode a prepared corpus into the feature cache.

Training reads the same cache (``features.cache_dir``), so running this first only
moves the encoding time; a second run is a no-op.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fdrl.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    from fdrl.config import DataConfig, FeaturesConfig

    p = subparsers.add_parser(
        "features", help="encode a prepared corpus into the feature cache",
        description="Encode every utterance of DATA (a folder from `fdrl prepare`) with a speech "
                    "and a text encoder and store the results in the feature cache. Cached "
                    "utterances are not encoded again.")
    p.add_argument("data", type=Path, nargs="?", metavar="DATA", help="prepared corpus folder (manifest.jsonl)")
    p.add_argument("--speech", metavar="NAME", default=None,
                   help="speech encoder: a name (egemaps, egemaps-functionals, logmel, precomputed, "
                        "none), a hub id / model folder, or a JSON spec such as "
                        "'{\"name\": \"logmel\", \"n_mels\": 80}' (default: egemaps for audio, "
                        "precomputed for a feature dump)")
    p.add_argument("--text", metavar="NAME", default=None,
                   help="text encoder: minilm, none, a hub id / model folder, or a JSON spec "
                        "(default: minilm when the corpus has text)")
    p.add_argument("--sequences", action="store_true",
                   help="also cache frame/token sequences (needed by sequence models)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR", default=Path(FeaturesConfig().cache_dir),
                   help="feature cache folder (default: %(default)s, as features.cache_dir)")
    p.add_argument("--batch-size", type=int, metavar="N", default=FeaturesConfig().batch_size,
                   help="utterances per encoder call (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, metavar="S", default=DataConfig().max_seconds,
                   help="keep the first S seconds of each audio file (default: %(default)s, as "
                        "data.max_seconds; a different value is a different cache entry)")
    p.add_argument("--device", default="cpu", help="torch device for transformers encoders")
    p.add_argument("--info", action="store_true", help="describe the cache's contents and exit")
    p.set_defaults(func=run)


def _parse(value: str | None) -> Any:
    """A CLI encoder argument: a name, or a JSON/YAML mapping."""
    if value is None or not value.strip().startswith("{"):
        return value
    import yaml

    try:
        spec = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"encoder spec {value!r} is not valid JSON/YAML ({exc})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"encoder spec {value!r} must be a mapping")
    return spec


def _default_speech(manifest) -> str:
    rows = manifest.rows
    if all(r.get("audio") for r in rows):
        return "egemaps"
    if all(r.get("features") for r in rows):
        return "precomputed"
    if not any(r.get("audio") or r.get("features") for r in rows):
        return "none"
    return "egemaps"  # partly missing audio: extraction names the first row without it


def _print_info(cache_dir: Path) -> int:
    from fdrl.encoders.cache import cache_info

    infos = cache_info(cache_dir)
    if not infos:
        print(f"{cache_dir}: empty feature cache")
        return 0
    for info in infos:
        spec = info["spec"] or {}
        print(f"{Path(info['folder']).name}: {info['modality']} {spec.get('name', '?')}  "
              f"{info['entries']} utterances ({info['with_sequences']} with sequences), "
              f"{info['shards']} shards, {info['bytes'] / 1e6:.1f} MB")
    return 0


def run(args: argparse.Namespace) -> int:
    from fdrl.data.manifest import read_manifest
    from fdrl.encoders.cache import extract_features
    from fdrl.encoders.precomputed import dump_source
    from fdrl.encoders.registry import DEFAULT_ENCODERS, build_encoder, parse_spec

    if args.info:
        return _print_info(args.cache_dir)
    if args.data is None:
        raise ConfigError("fdrl features: give DATA, a folder prepared by `fdrl prepare` (or --info)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise ConfigError(f"--max-seconds must be > 0, got {args.max_seconds}")
    manifest = read_manifest(args.data)
    chosen = {
        "speech": _parse(args.speech) or _default_speech(manifest),
        "text": _parse(args.text) or (DEFAULT_ENCODERS["text"]
                                      if any(r.get("text") is not None for r in manifest.rows) else "none"),
    }
    print(f"{args.data}: {len(manifest)} utterances; cache {args.cache_dir}")
    for modality, spec in chosen.items():
        spec = parse_spec(spec)
        if spec["name"] == "precomputed" and "source" not in spec:
            spec["source"] = dump_source(args.data)
        encoder = build_encoder(modality, spec, device=args.device)
        if encoder is None:
            print(f"{modality:<6} none (skipped)")
            continue
        table = extract_features(manifest, encoder, args.cache_dir, sequences=args.sequences,
                                 batch_size=args.batch_size, max_seconds=args.max_seconds)
        rate = f"{table.n_encoded / table.seconds:.1f} utt/s" if table.n_encoded else "all cached"
        seq = f", sequences (L, {table.sequence_dim})" if table.sequences else ""
        print(f"{modality:<6} {encoder.name:<20} dim {table.dim}{seq}: {table.n_encoded} encoded, "
              f"{table.n_cached} from cache, {table.seconds:.1f} s ({rate})  -> {table.folder.name}")
    return 0
