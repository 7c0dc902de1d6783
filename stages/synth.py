"""Synthetic track (GenProp): augmented clip as the model input, the original clip as the target.

Per clip one augmentation is drawn with the configured proportions (paper: copy-and-paste 0.5,
mask-and-fill 0.375, color-fill 0.125) from a generator seeded by (seed, sample_id), so reruns give the
same pairs. Copy-and-paste takes its object from another clip of the same shard (another source when
there is one), so a shard is all the stage needs to see.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from media.arrays import json_bytes, npz_bytes, read_npz
from media.synth_ops import (
    DEFAULT_PROPORTIONS,
    KINDS,
    Augmented,
    choose_augmentation,
    color_fill,
    copy_paste,
    instance_ids,
    mask_and_fill,
)
from media.video_io import decode_frames, encode_frames
from pipeline.stage import Params, Result, Sample, Stage
from stages.seeds import sample_key

TASKS = {"copy_paste": "removal", "mask_fill": "fill", "color_fill": "color"}
"""What a model learns from (augmented src -> original edit): remove the pasted object, fill the hidden
region back in, restore the recoloured object."""


class SynthParams(Params):
    seed: int = 0
    proportions: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PROPORTIONS))
    min_instance_area: float = Field(0.002, ge=0, lt=1, description="smallest instance, as a fraction of the frame")
    grow_px: int = Field(8, ge=0, description="mask-and-fill: pixels the box grows by")
    telea_fraction: float = Field(1 / 3, ge=0, le=1, description="mask-and-fill: share filled by Telea inpainting")
    second_instance_prob: float = Field(0.5, ge=0, le=1, description="color-fill: chance of a second instance")
    paste_scale: tuple[float, float] = (0.6, 1.0)
    crf: int = Field(18, ge=0, le=51)
    preset: str = "veryfast"

    @field_validator("proportions")
    @classmethod
    def _known_kinds(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown augmentations {sorted(unknown)}; known: {', '.join(KINDS)}")
        if any(v < 0 for v in value.values()) or sum(value.values()) <= 0:
            raise ValueError("proportions must be >= 0 with a positive sum")
        return value


class SynthAugment(Stage):
    version = "1"
    pair_columns = ('augmentation', 'task', 'instruction', 'donor_id', 'edit_area')
    Params = SynthParams
    reads = ("clip.mp4", "masks.npz", "fps", "source_id", "num_instances")
    writes = ("aug.mp4", "aug_mask.npz", "aug.json")
    columns = {
        "augmentation": pa.string(),
        "task": pa.string(),
        "instruction": pa.string(),
        "donor_id": pa.string(),
        "edit_area": pa.float32(),
    }
    params: SynthParams

    def prepare_shard(self, samples: Sequence[Sample]) -> None:
        self.shard_samples = {s.sample_id: s for s in samples}

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [self._one(sample) for sample in samples]

    def _rng(self, sample_id: str) -> np.random.Generator:
        return np.random.default_rng(sample_key(self.params.seed, sample_id))

    def _one(self, sample: Sample) -> Result:
        if not sample.columns.get("num_instances"):
            return Result.filtered(sample.sample_id, "no instance masks (needs a VOS input or the track stage)")
        frames = decode_frames(sample.read("clip.mp4"))
        masks = read_npz(sample.read("masks.npz"))["masks"]
        if masks.shape != frames.shape[:3]:
            return Result.failed(sample.sample_id, f"masks {masks.shape} do not match the clip {frames.shape[:3]}")
        rng = self._rng(sample.sample_id)
        ids = instance_ids(masks, min_area_frac=self.params.min_instance_area)
        if not ids:
            return Result.filtered(sample.sample_id, "no instance large enough in frame 0")
        kind = choose_augmentation(rng, self.params.proportions)
        donor_id = None
        try:
            if kind == "copy_paste":
                donor = self._donor(sample, rng)
                if donor is None:
                    return Result.filtered(sample.sample_id, "copy_paste: no other clip with instances in this shard")
                donor_id = donor.sample_id
                augmented = self._paste(frames, donor, rng)
            elif kind == "mask_fill":
                augmented = mask_and_fill(
                    frames, masks, int(rng.choice(ids)), rng, grow_px=self.params.grow_px,
                    telea_fraction=self.params.telea_fraction,
                )
            else:
                augmented = color_fill(frames, masks, ids, rng, second_instance_prob=self.params.second_instance_prob)
        except ValueError as exc:
            return Result.filtered(sample.sample_id, f"{kind}: {exc}")
        return self._result(sample, augmented, donor_id, float(sample.columns["fps"]))

    def _donor(self, sample: Sample, rng: np.random.Generator) -> Sample | None:
        pool = getattr(self, "shard_samples", {})
        candidates = [s for sid, s in sorted(pool.items()) if sid != sample.sample_id and s.columns.get("num_instances")]
        others = [s for s in candidates if s.columns.get("source_id") != sample.columns.get("source_id")]
        choices = others or candidates
        return choices[int(rng.integers(len(choices)))] if choices else None

    def _paste(self, frames: np.ndarray, donor: Sample, rng: np.random.Generator) -> Augmented:
        donor_frames = decode_frames(donor.read("clip.mp4"))
        donor_masks = read_npz(donor.read("masks.npz"))["masks"]
        donor_ids = instance_ids(donor_masks, min_area_frac=self.params.min_instance_area)
        if not donor_ids:
            raise ValueError(f"donor {donor.sample_id} has no instance large enough")
        donor_instance = int(rng.choice(donor_ids))
        return copy_paste(frames, donor_frames, donor_masks, donor_instance, rng, scale_range=self.params.paste_scale)

    def _result(self, sample: Sample, augmented: Augmented, donor_id: str | None, fps: float) -> Result:
        mp4 = encode_frames(augmented.frames, fps, crf=self.params.crf, preset=self.params.preset)
        meta = {"augmentation": augmented.kind, "params": augmented.params, "instruction": augmented.instruction,
                "donor_id": donor_id, "task": TASKS[augmented.kind]}
        files = {"aug.mp4": mp4, "aug_mask.npz": npz_bytes(masks=augmented.edit_mask), "aug.json": json_bytes(meta)}
        return Result.ok(
            sample.sample_id, files, augmentation=augmented.kind, task=TASKS[augmented.kind],
            instruction=augmented.instruction, donor_id=donor_id,
            edit_area=float((augmented.edit_mask > 0).mean()),
        )
