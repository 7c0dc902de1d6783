"""Whether a checked stage fits its share of a GPU type: as configured, and (diffusion stages) with each offload mode.

Per GPU: the weights (split over tensor-parallel GPUs) + one sample's activation peak + :data:`RESERVED_GIB`, against
the stage's share (``resources.gpus``, at most 1, times the GPU's memory; with ``scheduler.share_gpus`` a whole-GPU
stage's share is what the light stages beside it leave, ``pipeline.gpu_sharing``). A vLLM stage takes exactly its
``gpu_memory_utilization`` of the GPU, which must hold the weights, one request's activations, the KV cache for
``max_model_len`` and the reserve, and must not exceed the stage's share.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.realsize.check import StageCheck
from pipeline.gpu_sharing import Sharing
from pipeline.gpus import GIB, GPU, RESERVED_GIB
from pipeline.graph import StageNode


@dataclass(frozen=True)
class Fit:
    option: str
    """How the stage holds its models: as configured, or with an offload option."""
    needed_gib: float
    """Per GPU: weights (split over tensor-parallel GPUs) + activations + :data:`RESERVED_GIB`; a vLLM engine takes
    its whole gpu_memory_utilization share."""
    limit_gib: float
    """Per GPU: the stage's share of one GPU (resources.gpus, at most 1) times the GPU's memory."""
    fits: bool
    note: str = ""


def fits(report: StageCheck, node: StageNode, gpu: GPU, sharing: Sharing | None = None) -> list[Fit]:
    """Whether the stage's models fit its GPU share, as configured and (diffusion stages) with each offload option."""
    from models.vlm import VLMParams
    from models.wan import WanParams

    resources, params = node.resources, node.params
    if not resources.gpus_needed():
        return [Fit("as configured", 0.0, 0.0, True, "no GPU in resources: the models run on CPU")]
    parallel = max(1, resources.tensor_parallel)
    share = sharing.gpus_held(node.name, resources) if sharing else resources.gpus_needed()
    limit = min(1.0, share / parallel) * gpu.memory_gib
    weights, activation = report.weight_bytes / GIB / parallel, report.activation_bytes / GIB / parallel
    if isinstance(params, VLMParams) and params.backend == "vllm":
        engine = params.gpu_memory_utilization * gpu.memory_gib
        context = params.max_model_len or 32768
        kv = (report.kv_bytes_per_token or 0) * context / GIB / parallel
        need = weights + activation + kv + RESERVED_GIB
        note = (f"vLLM takes gpu_memory_utilization {params.gpu_memory_utilization:g} x {gpu.memory_gib:g} GiB = "
                f"{engine:.1f} GiB and needs {need:.1f} of it (weights {weights:.1f}, one request's activations "
                f"{activation:.1f}, KV cache for max_model_len {context} {kv:.1f}, reserve {RESERVED_GIB:g})")
        if engine > limit + 1e-6:
            note += f"; that is more than the stage's share of the GPU ({limit:.1f} GiB)"
        return [Fit("as configured", max(need, engine), limit, need <= engine and engine <= limit + 1e-6, note)]
    resident = {"none": weights}
    if isinstance(params, WanParams):  # what each offload mode keeps on the GPU at a time
        resident["model"] = max((c.weight_bytes for c in report.components), default=0) / GIB
        resident["group"] = 2 * max((c.largest_block_bytes for c in report.components), default=0) / GIB
    configured = getattr(params, "offload", "none")
    out = []
    for mode, on_gpu in sorted(resident.items(), key=lambda item: item[0] != configured):
        need = on_gpu + activation + RESERVED_GIB
        option = "as configured" if mode == configured else f"offload: {mode}"
        out.append(Fit(option, need, limit, need <= limit,
                       f"weights on the GPU {on_gpu:.1f} + activations {activation:.1f} + reserve {RESERVED_GIB:g}"))
    return out
