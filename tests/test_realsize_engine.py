"""Shape-only execution (models/realsize/engine.py): what the real-size check's numbers rest on.

A model on the meta device computes shapes only inside its forward; outside, code sees its outputs as a constant of
their shape; FLOPs follow torch's formulas; the activation peak is the exact peak of live tensor bytes; repeated
ops are answered from a cache without changing the counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.realsize.counting import Counters
from models.realsize.engine import STAND_IN, ShapeOnly


def meta_linear(inputs: int, outputs: int) -> torch.nn.Linear:
    with torch.device("meta"):
        return torch.nn.Linear(inputs, outputs)


def test_a_meta_model_computes_shapes_and_code_outside_sees_the_stand_in() -> None:
    layer = meta_linear(8, 3)
    with ShapeOnly():
        layer.to("cpu")  # a stage's pipe.to(device): the weights stay on meta
        out = layer(torch.ones(5, 8))
        assert out.device.type == "meta" and out.shape == (5, 3)
        values = out.cpu().numpy()  # post-processing reads a constant of the output's shape
        assert values.shape == (5, 3) and np.all(values == STAND_IN)
        assert bool(torch.isfinite(out).all())  # a stage's finiteness check passes on the stand-in
        positive = (out > 0).sum()
        assert positive.device.type == "cpu" and int(positive) == 0
    assert layer.weight.device.type == "meta"


def test_inputs_keep_their_values_when_moved_to_a_meta_model() -> None:
    ids = torch.tensor([3, 1, 2])
    with ShapeOnly():
        moved = ids.to("meta")  # `inputs.to(model.device)`
        assert moved.device.type == "cpu" and moved.tolist() == [3, 1, 2]
        assert torch.zeros(2, device="meta").device.type == "cpu"  # made outside a model: real


def test_value_reads_inside_a_model_are_recorded() -> None:
    class Reads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = meta_linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.layer(x)
            return y * 2 if y.sum().item() > 0 else y  # data-dependent control flow

    model = Reads()
    with ShapeOnly() as shape_only:
        model(torch.ones(1, 4))
    assert sum(shape_only.value_reads.values()) == 1
    assert any("test_realsize_engine.py" in place for place in shape_only.value_reads)


def test_flops_follow_the_matmul_and_attention_formulas() -> None:
    layer = meta_linear(64, 32)
    with ShapeOnly() as shape_only, Counters(shape_only).measure() as measured:
        layer(torch.ones(10, 64))
    assert measured.flops == 2 * 10 * 64 * 32
    assert measured.by_module == {"Linear": 2 * 10 * 64 * 32, "other": 0}

    class Attention(torch.nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    model, q = Attention(), torch.empty(1, 4, 128, 16, device="meta")
    with ShapeOnly() as shape_only, Counters(shape_only).measure() as measured:
        model(q)
    assert measured.flops == 4 * 4 * 128 * 128 * 16  # QK^T and AV, two FLOPs a multiply-add


def test_repeated_ops_are_cached_without_changing_the_count() -> None:
    layers = torch.nn.Sequential(*[meta_linear(48, 48) for _ in range(6)])
    with ShapeOnly() as shape_only, Counters(shape_only).measure() as first:
        layers(torch.ones(7, 48))
    with ShapeOnly() as shape_only, Counters(shape_only).measure() as again:
        layers(torch.ones(7, 48))
    assert first.flops == again.flops == 6 * 2 * 7 * 48 * 48


def test_the_activation_peak_is_the_largest_sum_of_live_tensors() -> None:
    mib = 1 << 20

    class Holds(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.empty(mib, dtype=torch.uint8, device="meta") + x  # its 1 MiB operand is freed after the add
            b = torch.empty(2 * mib, dtype=torch.uint8, device="meta") + x  # a, b and b's operand: 5 MiB live
            del a, b
            c = torch.empty(2 * mib, dtype=torch.uint8, device="meta") + x  # 4 MiB live: no new peak
            return c[:1]  # a view of c: no new storage

    model, x = Holds(), torch.zeros((), dtype=torch.uint8, device="meta")
    with ShapeOnly() as shape_only, Counters(shape_only).measure() as measured:
        model(x)
    assert measured.peak_bytes == 5 * mib
    assert measured.peak_in == "Holds"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_meta_weight_keeps_its_dtype_conversions(dtype: torch.dtype) -> None:
    layer = meta_linear(4, 4)
    with ShapeOnly():
        layer.to("cuda", dtype)  # no CUDA here: a meta weight only changes dtype
    assert layer.weight.device.type == "meta" and layer.weight.dtype == dtype


def test_a_repeated_stateless_model_call_replays_its_first_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pure model call (replay.PURE_CALLS) with inputs of the same shapes runs once; its repeats give the same
    outputs' shapes, FLOPs and activation peak, as if they had run. A call given an object (a cache, a session) is
    never replayed."""
    from models.realsize import replay

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = meta_linear(32, 64)
            self.runs = 0

        def forward(self, x: torch.Tensor, state: object = None) -> tuple[torch.Tensor, torch.Tensor]:
            self.runs += 1
            hidden = self.layer(x)
            return hidden.relu(), hidden.sum(-1)

    monkeypatch.setitem(replay.PURE_CALLS, "Encoder", ("forward",))
    model = Encoder()
    replay.as_model_call(model)
    flops = []
    with ShapeOnly() as shape_only:
        for _ in range(3):
            with Counters(shape_only).measure() as measured:
                out, total = model(torch.ones(4, 32))
            flops.append((measured.flops, measured.peak_bytes))
            assert out.shape == (4, 64) and total.shape == (4,) and out.device.type == "meta"
        assert model.runs == 1 and len(set(flops)) == 1 and flops[0][0] == 2 * 4 * 32 * 64
        with Counters(shape_only).measure():
            model(torch.ones(4, 32), state=object())
        assert model.runs == 2
