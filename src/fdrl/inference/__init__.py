"""Inference: model bundles (:mod:`.bundle`), prediction (:mod:`.predict`, also
``fdrl.load``), transcription for missing text (:mod:`.asr`) and the HTTP service
(:mod:`.serve`). Submodules are imported on use so ``import fdrl`` stays cheap."""
