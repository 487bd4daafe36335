"""The built-in demo corpus: a small, generated, deterministic speech + text corpus.

``generate_demo(out)`` writes ``OUT/audio/<utt_id>.wav`` (16-bit PCM, mono) and
``OUT/manifest.jsonl`` + ``OUT/labels.json`` in the common manifest format, so the
whole toolkit (folds, encoders, training, ablations) can run end to end without
any licensed data.

The corpus is built to be a testbed where fusion matters, not a toy that any
single input solves:

* 5 sessions x 2 speakers (one female, one male), 4 classes
  (angry, happy, neutral, sad), neutral a little more frequent, 1-3 s each.
* **Speech** is a synthetic voice (a harmonic source on a moving f0 through three
  formant resonators, syllable-shaped amplitude, consonant noise bursts, room noise).
  Emotion is prosody: pitch level and range, syllable rate, loudness, spectral tilt.
  Angry and happy are both high-arousal and sound alike, as do sad and neutral,
  so audio separates *arousal* well and *valence* poorly. Speaker identity is
  timbre (base f0, formant scale) plus personal rate/loudness/expressiveness habits
  of the same size as the emotion effects, so audio alone stays imperfect.
* **Text** is a template sentence whose emotion shows through word choice, with
  ambiguity: a fifth of the emotional sentences are neutral-worded, angry and sad
  share negative phrases, happy and neutral share pleasant small talk, angry and
  happy share exclamations, sad and neutral share hedges. Text separates *valence*
  better than arousal, and its main confusions (angry/sad, happy/neutral) are the
  ones the audio resolves: together they beat either alone by a wide margin
  (``benchmarks/demo_modalities.py``, ``docs/demo_corpus.md``).

Every utterance draws its own random stream from ``(seed, index)``, so the output is
byte-identical for a seed and does not depend on generation order.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import lfilter, sosfilt
from tqdm import tqdm

from fdrl.data.manifest import LABELS_NAME, MANIFEST_NAME, read_manifest, write_manifest
from fdrl.errors import ConfigError, DataError
from fdrl.utils.io import atomic_path, read_json

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump whenever the output for a given seed changes
CLASSES = ["angry", "happy", "neutral", "sad"]
N_SESSIONS = 5
GENDERS = ("F", "M")  # speaker order inside a session: genders alternate
_UTT_ID = re.compile(r"s\d+_[FM]_\d{4,}")  # s<session>_<gender>_<number>

# Label quota per speaker, drawn as shuffled blocks: neutral a bit more frequent (as in
# IEMOCAP), the rest balanced, so every speaker has every class.
LABEL_BLOCK = ["angry"] * 3 + ["happy"] * 3 + ["neutral"] * 4 + ["sad"] * 3

# Random streams: the second entry of the seed sequence keeps streams independent.
_STREAM_UTT_TEXT, _STREAM_UTT_AUDIO, _STREAM_SPEAKER, _STREAM_SESSION, _STREAM_LABELS = range(5)


# --------------------------------------------------------------------------- text

# Neutral content clauses, shared by every class, so that the template itself says
# nothing about the label.
_CONTENT = [
    "the meeting was moved to {time}",
    "I talked to {person} about the {thing}",
    "we have to send the {thing} before {time}",
    "{person} is coming over on {day}",
    "the {thing} is still in the {place}",
    "I took the {thing} to the {place}",
    "they said the {thing} would be ready on {day}",
    "I have been at the {place} since {time}",
    "we drove past the {place} on {day}",
    "you told me about the {thing} on {day}",
    "{person} called about the {thing}",
    "the {place} closes at {time}",
]
_SLOTS = {
    "person": ["my brother", "your mother", "the manager", "my friend", "the neighbour",
               "the landlord", "my sister", "the doctor", "the teacher", "your cousin"],
    "thing": ["letter", "car", "form", "ticket", "package", "job offer", "house", "dinner",
              "report", "phone", "keys", "trip", "contract", "photos"],
    "place": ["office", "kitchen", "airport", "station", "bank", "store", "hospital",
              "beach", "garage", "hotel", "school"],
    "time": ["five", "noon", "ten", "tonight", "tomorrow morning", "the weekend"],
    "day": ["Monday", "Tuesday", "Friday", "Sunday", "the weekend"],
}

# Emotion phrases. Specific pools point to one class; shared pools are the ambiguity.
_PHRASES = {
    "angry": ["this is ridiculous", "I am sick of this", "how dare you", "I am furious",
              "stop lying to me", "that is completely unfair", "get out of my way",
              "don't you dare", "are you kidding me", "I am fed up with you",
              "you never listen", "shut up and listen"],
    "happy": ["this is wonderful", "I love it", "that is amazing", "I am so excited",
              "we did it", "what a great day", "I am thrilled", "this is fantastic",
              "congratulations", "I can't wait", "it is perfect", "I am so proud of you"],
    "sad": ["I miss her so much", "I feel so alone", "it is all gone", "I can't stop crying",
            "nobody cares anymore", "I am heartbroken", "I wish it were different",
            "it hurts", "I lost everything", "I just want to go home"],
    # negative valence, either arousal: angry <-> sad confusion in text
    "negative": ["this is terrible", "it is awful", "everything went wrong",
                 "I can't take this anymore", "I hate this", "why does this always happen",
                 "it is not fair", "what a disaster"],
    # exclamations: high arousal, either valence: angry <-> happy confusion in text
    "exclaim": ["oh my god", "I can't believe it", "seriously", "look at this",
                "right now", "wow", "no way"],
    # mild, pleasant small talk: happy <-> neutral confusion in text
    "pleasant": ["that sounds good", "okay then", "sure", "that is nice", "fine by me",
                 "thanks", "all right", "good"],
    # hedges: low arousal, sad <-> neutral overlap
    "hedge": ["I guess", "I don't know", "maybe", "anyway", "I am tired", "well",
              "it is late", "whatever"],
}

# P(phrase pool | label); the remainder is a plain, neutral-worded sentence.
_PHRASE_MIX = {
    "angry": {"angry": 0.34, "negative": 0.40, "exclaim": 0.06},
    "happy": {"happy": 0.40, "pleasant": 0.34, "exclaim": 0.06},
    "neutral": {"pleasant": 0.25, "hedge": 0.10},
    "sad": {"sad": 0.34, "negative": 0.40, "hedge": 0.06},
}
# P(sentence ends with "!"): a weak arousal cue in writing, shared by angry and happy
# (kept weak so that text stays a valence cue; TF-IDF ignores punctuation anyway).
_EXCLAIM_PROB = {"angry": 0.3, "happy": 0.3, "neutral": 0.1, "sad": 0.1}


def make_sentence(label: str, rng: np.random.Generator) -> str:
    """Draw one transcript for ``label``.

    A content clause (from shared, label-free templates) with, depending on the
    label's mix, an emotion phrase before or after it.
    """
    template = _CONTENT[rng.integers(len(_CONTENT))]
    fill = {k: v[rng.integers(len(v))] for k, v in _SLOTS.items()}
    clause = template.format(**fill)
    mix = _PHRASE_MIX[label]
    pools = list(mix)
    probs = np.array([mix[p] for p in pools] + [1.0 - sum(mix.values())])
    choice = rng.choice(len(probs), p=probs)
    end = "!" if rng.random() < _EXCLAIM_PROB[label] else "."
    if choice == len(pools):  # plain, neutral-worded whatever the label
        return clause[0].upper() + clause[1:] + end
    pool = _PHRASES[pools[choice]]
    phrase = pool[rng.integers(len(pool))]
    if rng.random() < 0.5:
        text = f"{phrase}, {clause}{end}"
    else:
        text = f"{clause}, {phrase}{end}"
    return text[0].upper() + text[1:]


# -------------------------------------------------------------------------- audio

@dataclass(frozen=True)
class Prosody:
    """How an emotion shifts a speaker's voice (before per-speaker expressiveness)."""

    f0_st: float      # pitch level shift, semitones
    range_st: float   # std of per-syllable pitch accents, semitones
    rate: float       # syllable-rate multiplier
    level_db: float   # loudness shift, dB
    tilt: float       # spectral brightness (+ brighter, - darker)
    breath: float     # extra aspiration noise (fraction of the voiced level)


# High-arousal pair and low-arousal pair differ a lot; inside a pair only a little.
PROSODY = {
    "angry": Prosody(f0_st=3.5, range_st=2.4, rate=1.22, level_db=7.0, tilt=0.55, breath=0.00),
    "happy": Prosody(f0_st=3.8, range_st=2.8, rate=1.16, level_db=6.5, tilt=0.35, breath=0.01),
    "neutral": Prosody(f0_st=0.0, range_st=1.4, rate=1.00, level_db=0.0, tilt=0.00, breath=0.02),
    "sad": Prosody(f0_st=-0.6, range_st=1.1, rate=0.90, level_db=-1.5, tilt=-0.15, breath=0.04),
}

# Formants (Hz) and bandwidths of a reference male vowel set; speakers scale them.
_VOWELS = np.array([
    [730.0, 1090.0, 2440.0],  # a
    [270.0, 2290.0, 3010.0],  # i
    [300.0, 870.0, 2240.0],   # u
    [530.0, 1840.0, 2480.0],  # e
    [570.0, 840.0, 2410.0],   # o
])
_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


@dataclass(frozen=True)
class Speaker:
    """A speaker's voice: timbre (f0, formants) and personal speaking habits."""

    speaker: str
    session: int
    gender: str
    f0: float            # base f0, Hz
    formant_scale: float  # vocal-tract scale: >1 shorter tract, higher formants
    rate: float          # syllables per second when neutral
    level_db: float      # habitual loudness offset, dB
    tilt: float          # habitual brightness
    breath: float        # habitual aspiration noise
    expressiveness: float  # scales how strongly emotion shows in this voice


def make_speaker(seed: int, index: int) -> Speaker:
    """The ``index``-th speaker (0..9): session ``index // 2 + 1``, genders alternate."""
    rng = np.random.default_rng([seed, _STREAM_SPEAKER, index])
    session = index // 2 + 1
    gender = GENDERS[index % 2]
    female = gender == "F"
    return Speaker(
        speaker=f"s{session}_{gender}",
        session=session,
        gender=gender,
        f0=float(rng.uniform(175.0, 240.0) if female else rng.uniform(95.0, 140.0)),
        formant_scale=float(rng.uniform(1.10, 1.22) if female else rng.uniform(0.94, 1.06)),
        rate=float(rng.uniform(3.4, 4.8)),
        level_db=float(rng.uniform(-2.0, 2.0)),
        tilt=float(rng.uniform(-0.3, 0.3)),
        breath=float(rng.uniform(0.01, 0.06)),
        expressiveness=float(rng.uniform(0.8, 1.25)),
    )


def _session_channel(seed: int, session: int) -> tuple[float, float]:
    """A session's recording gain (dB) and noise floor (RMS, linear)."""
    rng = np.random.default_rng([seed, _STREAM_SESSION, session])
    return float(rng.uniform(-2.0, 2.0)), float(10 ** (rng.uniform(-52.0, -44.0) / 20))


def _resonator_sos(freqs: np.ndarray, bws: np.ndarray, sr: int) -> np.ndarray:
    """Second-order sections of a cascade of two-pole resonators, unit gain at DC.

    Parameters
    ----------
    freqs, bws : (K,) centre frequencies and bandwidths in Hz
    Returns
    -------
    (K, 6) sos array for :func:`scipy.signal.sosfilt`
    """
    r = np.exp(-np.pi * bws / sr)  # (K,)
    theta = 2 * np.pi * freqs / sr  # (K,)
    a1, a2 = -2 * r * np.cos(theta), r ** 2  # (K,)
    gain = 1 + a1 + a2  # DC gain normalisation: keeps the level independent of formants
    sos = np.zeros((len(freqs), 6))
    sos[:, 0] = gain
    sos[:, 3] = 1.0
    sos[:, 4] = a1
    sos[:, 5] = a2
    return sos


def synthesize(spk: Speaker, label: str, duration: float, rng: np.random.Generator,
               sample_rate: int, channel: tuple[float, float]) -> np.ndarray:
    """Synthesise one utterance of ``spk`` saying something in emotion ``label``.

    Parameters
    ----------
    spk : the speaker's voice
    label : emotion class, a key of :data:`PROSODY`
    duration : seconds; the output has ``round(duration * sample_rate)`` samples
    rng : this utterance's own random stream
    sample_rate : Hz
    channel : (session gain in dB, noise-floor RMS)

    Returns
    -------
    (N,) float64 waveform in [-1, 1]
    """
    sr = sample_rate
    n = int(round(duration * sr))
    t = np.arange(n) / sr  # (N,)
    emo = PROSODY[label]
    x = spk.expressiveness * rng.uniform(0.8, 1.2)  # how much emotion this take shows

    # Per-utterance prosody: speaker habit + scaled emotion shift + take-to-take noise.
    f0_st = x * emo.f0_st + rng.normal(0.0, 1.0)
    range_st = max(0.3, (1.2 + x * (emo.range_st - 1.2)) * rng.uniform(0.7, 1.3))
    rate = spk.rate * (1 + x * (emo.rate - 1)) * rng.uniform(0.85, 1.15)
    level_db = spk.level_db + x * emo.level_db + channel[0] + rng.normal(0.0, 1.5)
    tilt = spk.tilt + x * emo.tilt + rng.normal(0.0, 0.25)
    breath = max(0.0, spk.breath + emo.breath + rng.normal(0.0, 0.01))

    # Syllables: jittered onsets at ``rate``, occasional pauses, a voiced part each.
    lead = rng.uniform(0.05, 0.2)
    max_syl = int(np.ceil(duration * rate * 1.6)) + 2
    gaps = rng.uniform(0.7, 1.3, max_syl) / rate  # (S,)
    gaps += (rng.random(max_syl) < 0.12) * rng.uniform(0.1, 0.3, max_syl)  # pauses
    onsets = lead + np.concatenate([[0.0], np.cumsum(gaps[:-1])])  # (S,)
    voiced_len = gaps * rng.uniform(0.55, 0.8, max_syl)  # (S,)
    keep = onsets + voiced_len < duration - 0.05
    keep[0] = True  # at least one syllable, even for very short or slow takes
    onsets = onsets[keep]
    voiced_len = np.minimum(voiced_len[keep], duration - 0.05 - onsets)
    n_syl = len(onsets)

    # Envelope: each sample belongs to the syllable that started last before it.
    syl = np.searchsorted(onsets, t, side="right") - 1  # (N,) -1 before the first
    syl_c = np.clip(syl, 0, n_syl - 1)
    pos = t - onsets[syl_c]  # (N,) seconds into the syllable
    inside = (syl >= 0) & (pos < voiced_len[syl_c])
    stress = 10 ** (rng.normal(0.0, 2.5, n_syl) / 20)  # (S,) per-syllable loudness
    env = np.where(inside, np.sin(np.pi * np.clip(pos / voiced_len[syl_c], 0, 1)) ** 0.6, 0.0)
    env *= stress[syl_c]  # (N,)

    # f0: declining baseline + per-syllable accents, interpolated, plus slow wobble.
    centres = onsets + voiced_len / 2  # (S,)
    accents = rng.normal(0.0, range_st, n_syl)  # (S,) semitones
    decl = -rng.uniform(1.0, 3.0) * centres / duration  # (S,) semitones
    st = np.interp(t, centres, accents + decl) + f0_st  # (N,)
    st += 0.15 * np.sin(2 * np.pi * rng.uniform(4.0, 6.0) * t + rng.uniform(0, 2 * np.pi))
    f0 = spk.f0 * 2 ** (st / 12)  # (N,) Hz
    phase = np.cumsum(f0 / sr) + rng.random()  # (N,) cycles
    source = 2 * (phase % 1.0) - 1  # (N,) sawtooth: all harmonics, 1/k roll-off

    # Spectral tilt: a one-pole low-pass whose strength falls as the voice gets brighter.
    pole = float(np.clip(0.55 - 0.3 * tilt, 0.05, 0.92))
    source = lfilter([1 - pole], [1, -pole], source)  # (N,)
    source += breath * 4 * rng.standard_normal(n) * (1 + env)  # aspiration

    # Vowel timbre: filter through every vowel's formants, each syllable picks one.
    vowel_of = rng.integers(len(_VOWELS), size=n_syl)  # (S,)
    vowel = vowel_of[syl_c]  # (N,)
    voiced = np.zeros(n)
    scale = spk.formant_scale * rng.uniform(0.97, 1.03)
    for v in np.unique(vowel_of):
        sos = _resonator_sos(_VOWELS[v] * scale, _BANDWIDTHS * scale, sr)
        voiced += np.where(vowel == v, sosfilt(sos, source), 0.0)
    voiced *= env
    voiced /= np.sqrt(np.mean(voiced[inside] ** 2)) + 1e-12  # unit RMS over voiced part

    # Consonants: short high-passed noise bursts right before some syllable onsets.
    burst_len = rng.uniform(0.03, 0.08, n_syl)  # (S,)
    has_burst = rng.random(n_syl) < 0.6
    nxt = np.searchsorted(onsets, t, side="left")  # (N,) the syllable about to start
    nxt_c = np.clip(nxt, 0, n_syl - 1)
    before = onsets[nxt_c] - t  # (N,) seconds until it starts
    in_burst = (nxt < n_syl) & has_burst[nxt_c] & (before > 0) & (before < burst_len[nxt_c])
    noise = np.diff(rng.standard_normal(n + 1))  # (N,) first difference: high-passed
    speech = voiced + 0.15 * noise * in_burst

    # Level, then the room: a session noise floor that does not follow the voice.
    speech *= 0.04 * 10 ** (level_db / 20)  # about -28 dBFS when neutral: rare clipping
    floor = channel[1] * 10 ** (rng.normal(0.0, 2.0) / 20)
    room = lfilter([1.0], [1.0, -0.9], rng.standard_normal(n)) * np.sqrt(1 - 0.81)
    wave = speech + floor * room
    return np.clip(wave, -1.0, 1.0)


# ------------------------------------------------------------------------- corpus

def _label_of(seed: int, speaker_index: int, k: int) -> str:
    """Label of a speaker's ``k``-th utterance.

    Every speaker walks through the same shuffled :data:`LABEL_BLOCK` per block of 13
    utterances, each starting at its own offset: a speaker gets exactly the block's
    class mix every 13 utterances, and any 10 consecutive utterances (one per speaker)
    hit 10 different slots, so even a tiny corpus is balanced-ish.
    """
    n_slots, n_speakers = len(LABEL_BLOCK), N_SESSIONS * len(GENDERS)
    block, pos = divmod(k, n_slots)
    perm = np.random.default_rng([seed, _STREAM_LABELS, block]).permutation(n_slots)
    offset = speaker_index * n_slots // n_speakers  # distinct for the 10 speakers
    return LABEL_BLOCK[perm[(pos + offset) % n_slots]]


def plan_row(seed: int, index: int) -> dict[str, Any]:
    """Manifest row of utterance ``index`` without its audio (cheap: no synthesis).

    Depends on ``(seed, index)`` only. ``duration`` is filled by :func:`make_row`.
    """
    n_speakers = N_SESSIONS * len(GENDERS)
    spk_index, k = index % n_speakers, index // n_speakers
    spk = make_speaker(seed, spk_index)
    label = _label_of(seed, spk_index, k)
    utt_id = f"{spk.speaker}_{k + 1:04d}"
    return {
        "utt_id": utt_id,
        "corpus": "demo",
        "session": spk.session,
        "speaker": spk.speaker,
        "label": label,
        "audio": f"audio/{utt_id}.wav",
        "text": make_sentence(label, np.random.default_rng([seed, _STREAM_UTT_TEXT, index])),
        "duration": None,
        "gender": spk.gender,
    }


def make_row(seed: int, index: int, sample_rate: int) -> tuple[dict[str, Any], np.ndarray]:
    """Manifest row and waveform of utterance ``index``; depends on ``(seed, index)`` only.

    Returns
    -------
    row : manifest row (``audio`` relative to the corpus folder)
    wave : (N,) float64 waveform
    """
    row = plan_row(seed, index)
    spk = make_speaker(seed, index % (N_SESSIONS * len(GENDERS)))
    rng = np.random.default_rng([seed, _STREAM_UTT_AUDIO, index])
    duration = round(float(rng.uniform(1.0, 3.0)) * sample_rate) / sample_rate
    wave = synthesize(spk, row["label"], duration, rng, sample_rate,
                      _session_channel(seed, spk.session))
    row["duration"] = round(len(wave) / sample_rate, 4)
    return row, wave


def _params(seed: int, n_utterances: int, sample_rate: int) -> dict[str, Any]:
    return {"seed": seed, "n_utterances": n_utterances, "sample_rate": sample_rate,
            "version": GENERATOR_VERSION}


def _up_to_date(out: Path, params: dict[str, Any]) -> bool:
    """True when ``out`` already holds this exact corpus (manifest, params and every wav)."""
    mpath, lpath = out / MANIFEST_NAME, out / LABELS_NAME
    if not (mpath.is_file() and lpath.is_file()):
        return False
    try:
        if read_json(lpath).get("generator") != params:
            return False
    except (OSError, ValueError):
        return False  # a damaged labels.json: regenerate rather than fail
    try:
        rows = read_manifest(mpath).rows
    except DataError:
        return False
    return len(rows) == params["n_utterances"] and all(
        (out / r["audio"]).is_file() for r in rows)


def _remove_stale(audio_dir: Path, keep: set[str]) -> None:
    """Delete wavs of an earlier, larger demo corpus (only names this generator writes)."""
    for wav in audio_dir.glob("*.wav"):
        if _UTT_ID.fullmatch(wav.stem) and wav.stem not in keep:
            wav.unlink()


def generate_demo(out: str | Path, seed: int = 0, n_utterances: int = 800,
                  sample_rate: int = 16000) -> Path:
    """Write the demo corpus to ``out`` and return the manifest path.

    Writes ``OUT/audio/<utt_id>.wav`` (16-bit PCM mono) and ``OUT/manifest.jsonl`` +
    ``OUT/labels.json`` (with the generator parameters under ``"generator"``). The
    manifest is written last, so an interrupted run is redone in full next time.
    Does nothing (logs "up to date") when ``out`` already holds the same corpus.

    Parameters
    ----------
    out : corpus folder (created if needed)
    seed : same seed -> byte-identical files
    n_utterances : total number of utterances, spread evenly over the 10 speakers
    sample_rate : Hz

    Raises
    ------
    ConfigError : ``n_utterances`` < 10 (every speaker needs one) or ``sample_rate`` < 8000
    """
    out = Path(out)
    n_speakers = N_SESSIONS * len(GENDERS)
    if int(n_utterances) < n_speakers:
        raise ConfigError(f"demo corpus: n_utterances={n_utterances}, expected at least "
                          f"{n_speakers} (one per speaker)")
    if int(sample_rate) < 8000:
        raise ConfigError(f"demo corpus: sample_rate={sample_rate}, expected >= 8000 Hz "
                          f"(the formants reach 3.7 kHz)")
    params = _params(int(seed), int(n_utterances), int(sample_rate))
    if _up_to_date(out, params):
        log.info("demo corpus in %s is up to date (%d utterances)", out, n_utterances)
        return out / MANIFEST_NAME

    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(params["n_utterances"]), desc="demo corpus", unit="utt", disable=None):
        row, wave = make_row(params["seed"], i, params["sample_rate"])
        # quantise here rather than in libsndfile: the bytes then depend on numpy only
        pcm = np.round(wave * 32767).astype(np.int16)  # (N,)
        with atomic_path(out / row["audio"]) as tmp:
            sf.write(tmp, pcm, params["sample_rate"], subtype="PCM_16", format="WAV")
        rows.append(row)
    rows.sort(key=lambda r: (r["session"], r["speaker"], r["utt_id"]))
    _remove_stale(out / "audio", {r["utt_id"] for r in rows})
    path = write_manifest(out, rows, CLASSES, extra_labels={"generator": params})
    log.info("demo corpus: %d utterances written to %s", len(rows), out)
    return path
