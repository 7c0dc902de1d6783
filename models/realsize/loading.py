"""Models built from their configuration instead of loaded: the one change the real-size check and the GPU timing
bench make to a stage's own loading code.

Inside :func:`built_from_config` every ``from_pretrained`` of a transformers model (``PreTrainedModel``) or a
diffusers model (``ModelMixin``, so also each component a ``DiffusionPipeline.from_pretrained`` loads) reads the
folder's ``config.json`` and builds the architecture on ``device`` in the dtype asked for, reading no weights:
on ``meta`` (no memory, no values: :mod:`models.realsize.engine` runs it shape-only) or on a real device with the
library's random initialisation (the GPU timing bench: compute cost does not depend on weight values).
Tokenizers, processors and schedulers load as usual from the same folder. diffusers' ``_keep_in_fp32_modules``
stay float32, as ``from_pretrained`` keeps them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch


def _dtype(kwargs: dict[str, Any], default: Any) -> torch.dtype | None:
    value = kwargs.get("dtype", kwargs.get("torch_dtype"))
    if isinstance(value, dict):  # a pipeline-level mapping reached a model: its default
        value = value.get("default")
    if value is None or value == "auto":
        value = default
    if isinstance(value, str):
        value = getattr(torch, value)
    return value if isinstance(value, torch.dtype) else None


def _folder(path: Any, kwargs: dict[str, Any]) -> str:
    folder = os.fspath(path)
    if kwargs.get("subfolder"):
        folder = os.path.join(folder, kwargs["subfolder"])
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"{folder}: no config.json to build the model from")
    return folder


@contextlib.contextmanager
def built_from_config(device: str | torch.device = "meta") -> Iterator[None]:
    """While entered, model ``from_pretrained`` calls build from config on ``device`` (module docstring)."""
    from diffusers.models.modeling_utils import ModelMixin
    from transformers import PreTrainedModel

    from models.realsize.engine import paused
    from models.realsize.replay import as_model_call

    target = torch.device(device)

    def transformers_model(cls: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        config = kwargs.get("config")
        if config is None or isinstance(config, (str, os.PathLike)):
            config = cls.config_class.from_pretrained(_folder(path, kwargs))
        dtype = _dtype(kwargs, getattr(config, "dtype", None))
        with paused(), target:
            model = cls._from_config(config, **({"dtype": dtype} if dtype is not None else {}))
        if target.type == "meta":
            as_model_call(model)
        return model.eval()

    def diffusers_model(cls: Any, path: Any, **kwargs: Any) -> Any:
        config = cls.load_config(_folder(path, kwargs))
        dtype = _dtype(kwargs, None)
        keep = tuple(cls._keep_in_fp32_modules or ())
        with paused(), target:
            model = cls.from_config(config)
            if dtype is not None:
                for name, module in model.named_modules():
                    for key, param in module.named_parameters(recurse=False):
                        if keep and any(part in keep for part in (*name.split("."), key)):
                            continue
                        if param.is_floating_point():
                            module._parameters[key] = torch.nn.Parameter(param.to(dtype), requires_grad=False)
        if target.type == "meta":
            as_model_call(model)
        return model.eval()

    with mock.patch.object(PreTrainedModel, "from_pretrained", classmethod(transformers_model)), \
            mock.patch.object(ModelMixin, "from_pretrained", classmethod(diffusers_model)):
        yield
