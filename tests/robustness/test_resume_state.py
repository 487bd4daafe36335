"""A training state file in a run folder can hold code (pickle): resuming must refuse it
with one line and never execute it (issue 16, item 1)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from fdrl.config import TrainConfig
from fdrl.errors import RunError
from fdrl.models.base import InputSpec
from fdrl.models.fdrl import FDRLConfig, build
from fdrl.training.trainer import Trainer, rng_state, set_rng_state


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a crafted resume.pt would run on unpickling
        return (os.mkdir, (str(self.marker),))


def trainer() -> Trainer:
    model = build(FDRLConfig(d=8, hidden=16, d_input=12, disc_hidden=8, n_heads=2),
                  InputSpec(num_classes=3, speech_dim=5, text_dim=4))
    return Trainer(model, TrainConfig(), torch.device("cpu"), progress=False)


def test_a_resume_file_holding_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "resume.pt"
    with open(path, "wb") as fh:
        pickle.dump({"epoch": 0, "model": Payload(marker)}, fh)
    with pytest.raises(RunError, match="cannot resume from this training state .it holds objects other than tensors") as err:
        trainer()._load_resume(path, None)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_generator_states_round_trip_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    torch.save({"rng": rng_state(torch.device("cpu"))}, tmp_path / "s.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    set_rng_state(state["rng"], torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
