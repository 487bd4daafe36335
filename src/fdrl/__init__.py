"""fdrl: multimodal (speech + text) emotion recognition.

Fine-grained Disentangled Representation Learning (FDRL, arXiv 2312.13567), its
siblings Foal-Net (arXiv 2408.09438) and emotion/identity disentanglement
(arXiv 2102.06269), baselines, and the tooling around them: corpus readers, cached
encoder features, cross-validation, ablations, figures and inference bundles.
"""

__version__ = "0.1.0"


def load(bundle, device: str = "cpu", **kwargs):
    """Load a trained model bundle (``asr=...`` for transcription); returns a Predictor.

    See :func:`fdrl.inference.predict.load`.
    """
    from fdrl.inference.predict import load as _load

    return _load(bundle, device=device, **kwargs)


__all__ = ["__version__", "load"]
