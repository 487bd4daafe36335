"""Audio loading: downmix, resampling, cropping, and a DataError for every kind of bad file."""

from __future__ import annotations


import numpy as np
import pytest
import soundfile as sf

from fdrl.data.audio import audio_info, decode_audio_bytes, load_audio
from fdrl.errors import DataError


def _tone(sr: int, seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_stereo_is_averaged(tmp_path):
    left = _tone(16000, 0.5)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # (T, 2)
    sf.write(tmp_path / "st.wav", stereo, 16000, subtype="FLOAT")
    wav = load_audio(tmp_path / "st.wav")
    assert wav.dtype == np.float32 and wav.ndim == 1
    np.testing.assert_allclose(wav, left / 2, atol=1e-6)


@pytest.mark.parametrize("sr", [8000, 44100])
def test_resampled_length(tmp_path, sr):
    sf.write(tmp_path / "x.wav", _tone(sr, 1.25), sr)
    wav = load_audio(tmp_path / "x.wav", sample_rate=16000)
    assert abs(len(wav) - 20000) <= 1
    # The tone survives resampling: its spectrum peaks at 220 Hz.
    spec = np.abs(np.fft.rfft(wav))
    assert np.argmax(spec) * 16000 / len(wav) == pytest.approx(220.0, abs=2.0)


def test_crop_keeps_the_start(tmp_path):
    x = np.concatenate([_tone(16000, 1.0), np.zeros(16000, np.float32)])
    sf.write(tmp_path / "c.wav", x, 16000, subtype="FLOAT")
    wav = load_audio(tmp_path / "c.wav", max_seconds=0.5)
    assert len(wav) == 8000
    np.testing.assert_allclose(wav, x[:8000], atol=1e-6)
    sf.write(tmp_path / "c44.wav", _tone(44100, 2.0), 44100)
    assert len(load_audio(tmp_path / "c44.wav", max_seconds=0.75)) == 12000


def test_audio_info(tmp_path):
    sf.write(tmp_path / "i.flac", np.stack([_tone(22050, 2.0)] * 2, axis=1), 22050)
    info = audio_info(tmp_path / "i.flac")
    assert (info.sample_rate, info.channels, info.frames, info.format) == (22050, 2, 44100, "FLAC")
    assert info.duration == pytest.approx(2.0)


def test_bad_files_raise_data_error_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="absent.wav: audio file not found"):
        load_audio(tmp_path / "absent.wav")

    sf.write(tmp_path / "silent.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(DataError, match="silent.wav: audio is silent"):
        load_audio(tmp_path / "silent.wav")

    x = _tone(16000, 0.1)
    x[10] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="nan.wav: audio has 1 NaN/inf samples"):
        load_audio(tmp_path / "nan.wav")

    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError, match="empty.wav: audio has no samples"):
        load_audio(tmp_path / "empty.wav")

    (tmp_path / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEthis is not audio")
    with pytest.raises(DataError, match="junk.wav: unreadable or corrupt"):
        load_audio(tmp_path / "junk.wav")

    sf.write(tmp_path / "full.wav", _tone(16000, 1.0), 16000, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.wav: truncated audio file"):
        load_audio(tmp_path / "cut.wav")

    sf.write(tmp_path / "short.wav", _tone(8000, 0.05), 8000)  # 400 samples -> 800 at 16 kHz
    with pytest.raises(DataError, match=r"short.wav: audio too short: 800 samples .* at least 1600 needed"):
        load_audio(tmp_path / "short.wav", min_samples=1600)
    assert len(load_audio(tmp_path / "short.wav", min_samples=800)) == 800


def test_decode_bytes_same_checks(tmp_path):
    sf.write(tmp_path / "u.wav", _tone(8000, 0.5), 8000)
    wav = decode_audio_bytes((tmp_path / "u.wav").read_bytes(), sample_rate=16000)
    assert len(wav) == 8000
    with pytest.raises(DataError, match="upload.mp3: empty upload"):
        decode_audio_bytes(b"", name="upload.mp3")
    with pytest.raises(DataError, match="clip.wav: unreadable or corrupt"):
        decode_audio_bytes(b"definitely not a sound file", name="clip.wav")
    sf.write(tmp_path / "z.wav", np.zeros(100, np.float32), 16000)
    with pytest.raises(DataError, match="<uploaded audio>: audio is silent"):
        decode_audio_bytes((tmp_path / "z.wav").read_bytes())
