import warnings

import numpy as np
import pytest

from fdrl.encoders.acoustic import (EgemapsEncoder, EgemapsFunctionalsEncoder, LogMelEncoder,
                                    mean_std_pool)
from fdrl.encoders.precomputed import PrecomputedEncoder
from fdrl.errors import ConfigError, DataError

from .conftest import sine


def test_mean_std_pool():
    f = np.array([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_allclose(mean_std_pool(f), [2.0, 4.0, 1.0, 2.0])
    assert mean_std_pool(np.zeros((0, 3))).shape == (6,)


def test_egemaps_shapes_on_a_sine():
    enc = EgemapsEncoder()
    assert enc.dim == 50 and enc.sequence_dim == 25 and enc.min_samples == 960
    out = enc.encode([sine(1.0), sine(0.5, freq=330, seed=1)], sequences=True)
    assert out[0].sequence.shape[1] == 25 and 95 <= out[0].sequence.shape[0] <= 100  # 100 Hz
    assert out[1].sequence.shape[0] < out[0].sequence.shape[0]
    for o in out:
        assert o.pooled.shape == (50,) and np.isfinite(o.pooled).all()
        np.testing.assert_allclose(o.pooled, mean_std_pool(o.sequence), rtol=1e-5)
    # the threads give the same numbers as one at a time
    single = EgemapsEncoder(num_workers=1).encode([sine(1.0)])[0]
    np.testing.assert_array_equal(single.pooled, out[0].pooled)


def test_egemaps_short_input_is_padded_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # openSMILE warns "Segment too short" before filling NaN
        out = EgemapsEncoder().encode([sine(0.02)])[0]
    assert np.isfinite(out.pooled).all()


def test_egemaps_functionals_are_88_pooled_only():
    enc = EgemapsFunctionalsEncoder()
    out = enc.encode([sine(1.0)])[0]
    assert out.pooled.shape == (88,) and out.sequence is None and enc.dim == 88
    with pytest.raises(ConfigError, match="no frame sequence"):
        enc.encode([sine(1.0)], sequences=True)


def test_logmel_matches_direct_librosa():
    import librosa

    wave = sine(1.0)
    out = LogMelEncoder().encode([wave], sequences=True)[0]
    y = wave / np.abs(wave).max()
    S = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=2048, hop_length=512, n_mels=64, power=2.0)
    ref = librosa.power_to_db(S, ref=np.max, top_db=80.0).T  # (frames, 64)
    assert out.sequence.shape == (1 + 16000 // 512, 64) == ref.shape
    np.testing.assert_allclose(out.sequence, ref, atol=1e-4)
    assert out.sequence.max() == pytest.approx(0.0) and out.sequence.min() >= -80.0 - 1e-4
    assert out.pooled.shape == (128,)
    np.testing.assert_allclose(out.pooled, mean_std_pool(ref), atol=1e-4)
    # peak normalisation: the level of the input does not matter
    quiet = LogMelEncoder().encode([0.1 * wave])[0]
    np.testing.assert_allclose(quiet.pooled, out.pooled, atol=1e-3)


def test_logmel_rejects_bad_settings():
    with pytest.raises(ConfigError, match="n_mels"):
        LogMelEncoder(n_mels=0)


def test_precomputed_pools_like_logmel():
    frames = LogMelEncoder().encode([sine(0.7)], sequences=True)[0]
    enc = PrecomputedEncoder()
    out = enc.encode([frames.sequence])[0]
    np.testing.assert_allclose(out.pooled, frames.pooled, atol=1e-6)
    assert enc.feature_dim == 64 and enc.dim == 128 and enc.sequence_dim == 64
    assert enc.spec() == {"name": "precomputed", "dim": 64, "pooling": "mean_std", "source": None}
    with pytest.raises(DataError, match="feature size 32, expected 64"):
        enc.encode([np.zeros((5, 32))])
    with pytest.raises(DataError, match="expected \\(frames, d\\)"):
        enc.encode([np.zeros(64)])


def test_precomputed_vectors_and_mean():
    vec = PrecomputedEncoder(pooling="none").encode([np.arange(4.0)])[0]
    np.testing.assert_array_equal(vec.pooled, np.arange(4.0))
    mean = PrecomputedEncoder(dim=2, pooling="mean")
    np.testing.assert_allclose(mean.encode([np.array([[0.0, 1.0], [2.0, 3.0]])])[0].pooled, [1.0, 2.0])
    assert mean.dim == 2
    with pytest.raises(ConfigError, match="pooling"):
        PrecomputedEncoder(pooling="max")
