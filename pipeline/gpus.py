"""GPU types ffp sizes runs for: dense bf16 peak and memory, from the vendors' datasheets (SXM parts).

The peak is the tensor-core rate without sparsity; a real run reaches a fraction of it (its MFU). Wan's own
table gives 1,838 s for Wan2.1-T2V-14B at 1280x720x81 with 50 steps (and guidance) on one H100: its transformer
forwards alone are 653 PFLOP as the real-size check counts them (6,527 TFLOP each), 36 % of the H100's peak over
that time, which is where :data:`DEFAULT_MFU` comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class GPU:
    name: str
    label: str
    bf16_tflops: float
    """Dense bf16 tensor-core peak, TFLOP/s."""
    memory_gib: float
    """Memory the device reports (what PyTorch can allocate is about 1-2 GiB less)."""
    source: str


GPUS: dict[str, GPU] = {
    "a100": GPU("a100", "NVIDIA A100-SXM4-80GB", 312.0, 80.0,
                "NVIDIA A100 datasheet: BF16 tensor core 312 TFLOPS (624 with sparsity), 80 GB HBM2e"),
    "h100": GPU("h100", "NVIDIA H100-SXM5-80GB", 989.0, 80.0,
                "NVIDIA H100 datasheet: BF16 tensor core 1,979 TFLOPS with sparsity (989 dense), 80 GB HBM3"),
    "h200": GPU("h200", "NVIDIA H200-SXM-141GB", 989.0, 141.0,
                "NVIDIA H200 datasheet: BF16 tensor core 1,979 TFLOPS with sparsity (989 dense), 141 GB HBM3e"),
}

DEFAULT_GPU = "h100"
DEFAULT_MFU = 0.35
"""Model FLOPs utilisation assumed before anything is measured (printed next to every figure it makes)."""

RESERVED_GIB = 1.5
"""Memory a GPU process holds besides tensors: CUDA context, cuBLAS/cuDNN workspaces, allocator slack."""


def gpu(name: str) -> GPU:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}") from None
