"""Where a model stage's weights come from: remote code stays off unless a config turns it on for that model."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from stages.ground import GroundParams
from stages.judge import JudgeParams
from tests.conftest import make_config


def test_remote_code_is_off_unless_a_config_names_the_model() -> None:
    assert GroundParams().pretrained_kwargs()["trust_remote_code"] is False
    assert GroundParams(trust_remote_code=True).pretrained_kwargs()["trust_remote_code"] is True
    judge = JudgeParams.model_validate({"dino": {"model": "facebook/dinov2-base", "trust_remote_code": True}})
    assert judge.clip is not None and judge.clip.pretrained_kwargs()["trust_remote_code"] is False
    assert judge.dino is not None and judge.dino.pretrained_kwargs()["trust_remote_code"] is True


def test_turning_remote_code_on_is_a_checked_boolean(tmp_path) -> None:
    with pytest.raises(ConfigError, match="trust_remote_code"):
        make_config(tmp_path, inputs=[{"kind": "videos", "path": str(tmp_path)}], stages={
            "ingest": {"type": "ingest"}, "ground": {"type": "ground", "params": {"trust_remote_code": "sure"}},
        })
