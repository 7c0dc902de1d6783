"""Where a model stage's weights come from and where they run (DESIGN §6).

Every model stage's params derive from :class:`ModelParams`: ``model`` is a Hugging Face repo id (weights
from the local Hugging Face cache; ``HF_HUB_OFFLINE=1`` is respected by ``from_pretrained`` itself), a local
folder, or ``tiny:<arch>``, a random-weight tiny model of the same architecture built on this machine (see
``models.tiny``) and loaded through the same ``from_pretrained`` path. ``model``, ``revision`` and, for tiny
models, the builder version enter the stage fingerprint. Code from a model repository never runs unless that
stage's params set ``trust_remote_code: true`` for its model.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field

from pipeline.stage import RUNTIME_ONLY, Params

TINY_PREFIX = "tiny:"
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class ModelParams(Params):
    model: str = Field(description="Hugging Face repo id, local folder, or tiny:<arch> (random-weight tiny model)")
    revision: str | None = Field(None, description="git revision of the repo (branch, tag or commit)")
    device: str = Field("auto", description="auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: Dtype = Field("auto", description="auto: bfloat16 on GPU, float32 on CPU")
    trust_remote_code: bool = Field(
        False, description="run Python code shipped in this model's repository (transformers/vLLM "
        "trust_remote_code); only for a model that needs it and whose authors you trust", json_schema_extra=RUNTIME_ONLY,
    )

    def weights(self) -> str:
        """A path or repo id that ``from_pretrained`` accepts (tiny models are built on first use)."""
        if self.model.startswith(TINY_PREFIX):
            from models.tiny import ensure

            return str(ensure(self.model.removeprefix(TINY_PREFIX)))
        return self.model

    def pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained``: revision (hub ids only); remote code only when this model's
        params say so."""
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision and not self.model.startswith(TINY_PREFIX) and not os.path.isdir(self.model):
            kwargs["revision"] = self.revision
        return kwargs

    def model_identity(self) -> dict[str, Any]:
        """What of the model enters the fingerprint."""
        identity: dict[str, Any] = {"model": self.model, "revision": self.revision}
        if self.model.startswith(TINY_PREFIX):
            from models.tiny import builder_version

            identity["tiny_builder"] = builder_version(self.model.removeprefix(TINY_PREFIX))
        return identity

    def torch_device(self) -> Any:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> Any:
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        return getattr(torch, self.dtype)
