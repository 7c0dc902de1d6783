"""Export: the final pair format (DESIGN §1) as WebDataset shards, a dataset manifest and a dataset card.

Each pair is ``<key>.src.mp4``, ``<key>.edit.mp4``, ``<key>.edit0.png``, ``<key>.mask.mkv`` (per-frame edit
mask, uint8 0/255, lossless) and ``<key>.json`` (task, instruction, captions, scores, provenance). The videos and
the image are passed through from the stages that made them, never decoded or re-encoded here. The mask is
written as a lossless grey video (``media/mask_video.py``: FFV1 in Matroska, at the clip's fps), so that the common
loaders (Hugging Face ``datasets``, Ray Data, webdataset) hand it over as video bytes to decode frame by frame like
the clips, where they decoded an ``.npz`` whole (``datasets`` into nested Python lists: 150 MiB per 640x360 pair);
the upstream stages' ``.npz`` masks are converted here, bit for bit. ``mask_format: npz`` writes ``<key>.mask.npz``
(key ``masks``) instead, the upstream bytes unchanged. Which upstream field becomes which pair member is config,
so every track exports through this one stage.

Version 2: the mask is ``mask.mkv`` by default (version 1 wrote the upstream ``mask.npz`` as it was). Version 3:
every pair's json card has every key (``stages/dataset_card.py``), so that its type is one across pairs.

Which columns a pair carries is declared by the stages that make them (``Stage.pair_columns``): this stage receives
every pair column declared before it and writes them into its rows and ``dataset.parquet``. ``PAIR_COLUMNS`` is the
schema every export's rows start with (the same columns, in the same order, whatever the track, so datasets of
different tracks read alike); pair columns of other stages are appended after it (``StageNode.columns``).

After a judge, what is written follows the decision: a reviewer's label (``manifests/labels.py``) when there
is one, else the judge's verdict. ``select: accepted`` (the default) writes accepted pairs and leaves the others
``filtered`` with the reasons; ``select: rejected`` writes only the rejected ones (a second export stage in
its own folder, for analysis); ``all`` writes both. A changed label re-runs only the export shards it touches.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Sequence
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from manifests.layout import output_file
from manifests.manifest import Status, committed_tables
from manifests.storage import Storage
from media.arrays import json_bytes, npz_bytes
from media.errors import VideoError
from media.mask_video import MKV_MEMBER, NPZ_MEMBER, encode_masks, mask_format_of, read_masks
from pipeline.stage import Params, Result, Sample, Stage
from stages.dataset_card import dataset_card, pair_card
from stages.judge import ACCEPT, JUDGE_COLUMNS, REJECT

PAIR_COLUMNS: dict[str, pa.DataType] = {  # the schema every export starts with (not a filter: see above)
    "task": pa.string(),
    "instruction": pa.string(),
    "caption_src": pa.string(),
    "caption_edit": pa.string(),
    "source_id": pa.string(),
    "source_uri": pa.string(),
    "clip_index": pa.int16(),
    "num_frames": pa.int16(),
    "fps": pa.float32(),
    "width": pa.int16(),
    "height": pa.int16(),
    "augmentation": pa.string(),
    "donor_id": pa.string(),
    "edit_area": pa.float32(),
    "content_uri": pa.string(),
    "style_uri": pa.string(),
    "style_name": pa.string(),
    "style_caption": pa.string(),
    "prompt_version": pa.string(),
    "inpaint_seed": pa.int64(),
    "animate_seed": pa.int64(),
    "stylize_seed": pa.int64(),
    **JUDGE_COLUMNS,
    "rubric_rationale": pa.string(),
    "label": pa.string(),
    "label_reviewer": pa.string(),
    "label_note": pa.string(),
    "src_bytes": pa.int64(),
    "edit_bytes": pa.int64(),
    "lineage": pa.string(),
    "models": pa.string(),
}


class ExportParams(Params):
    src: str = Field("aug.mp4", description="upstream field exported as src.mp4 (the model input)")
    edit: str = Field("clip.mp4", description="upstream field exported as edit.mp4 (the target)")
    edit0: str = Field("frame0.png", description="upstream field exported as edit0.png (edited first frame)")
    mask: str = Field("aug_mask.npz", description="upstream field exported as the pair's mask (per-frame edit mask)")
    mask_format: Literal["mkv", "npz"] = Field(
        "mkv", description="the pair's mask member: mask.mkv (lossless FFV1 grey video, read frame by frame like the "
                           "clips) or mask.npz (numpy, key 'masks': read whole)"
    )
    select: Literal["accepted", "rejected", "all"] = Field(
        "accepted", description="after a judge: the pairs written (a reviewer's label overrules the verdict)"
    )
    dataset_name: str = "ffp-pairs"
    folder: str = Field(
        "export", pattern=r"^[a-z0-9_-]+(/[a-z0-9_-]+)*$",
        description="folder of the pairs inside the run (one per export stage when several tracks export)",
    )


class Export(Stage):
    version = "3"  # 2: the mask as mask.mkv (mask_format); 3: every json card has every key
    Params = ExportParams
    writes = ("src.mp4", "edit.mp4", "edit0.png", MKV_MEMBER, "json")
    columns = PAIR_COLUMNS
    uses_labels = True
    roles = frozenset({"export"})
    params: ExportParams

    @classmethod
    def writes_for(cls, params: Params) -> tuple[str, ...]:
        assert isinstance(params, ExportParams)
        mask = MKV_MEMBER if params.mask_format == "mkv" else NPZ_MEMBER
        return tuple(mask if field == MKV_MEMBER else field for field in cls.writes)

    @classmethod
    def output_dir_for(cls, params: Params) -> str:
        assert isinstance(params, ExportParams)
        return params.folder

    @classmethod
    def finalize_outputs_for(cls, params: Params) -> tuple[str, ...]:
        assert isinstance(params, ExportParams)
        return (output_file(params.folder, "dataset.parquet"), output_file(params.folder, "README.md"))

    @classmethod
    def reads_for(cls, params: Params) -> tuple[str, ...]:
        assert isinstance(params, ExportParams)
        return (params.src, params.edit, params.edit0, params.mask, "task", "instruction")

    @classmethod
    def pair_media_for(cls, params: Params) -> dict[str, str]:
        assert isinstance(params, ExportParams)
        return {"src": params.src, "edit": params.edit, "edit0": params.edit0, "mask": params.mask}

    @classmethod
    def pair_selection(cls, params: Params) -> str:
        assert isinstance(params, ExportParams)
        return params.select

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        return [self._one(sample) for sample in samples]

    def _one(self, sample: Sample) -> Result:
        p = self.params
        carried = (*self.context.pair_columns, "label", "label_reviewer", "label_note")
        columns = {name: sample.columns[name] for name in carried if name in sample.columns}
        left_out = _left_out(sample.columns, p.select)
        if left_out:
            return Result.filtered(sample.sample_id, left_out, **columns)
        src, edit = sample.read(p.src), sample.read(p.edit)
        try:
            mask_member, mask = self._mask(sample.read(p.mask), columns.get("fps"))
        except VideoError as exc:
            return Result.failed(sample.sample_id, f"cannot read the mask {p.mask}: {exc}", **columns)
        columns.update(src_bytes=len(src), edit_bytes=len(edit), lineage=json.dumps(self.context.lineage, sort_keys=True),
                       models=json.dumps(self.context.models, sort_keys=True, default=str))
        card = pair_card(sample.sample_id, columns, self._export_columns, provenance={
            "fingerprints": self.context.lineage, "models": self.context.models, "fields": p.model_dump()})
        files = {
            "src.mp4": src, "edit.mp4": edit, "edit0.png": sample.read(p.edit0), mask_member: mask,
            "json": json_bytes(card),
        }
        return Result.ok(sample.sample_id, files, **columns)

    @functools.cached_property
    def _export_columns(self) -> list[str]:
        """This export's manifest columns (``StageNode.columns``: its own, then the pair columns it appends)."""
        return list(dict.fromkeys((*self.columns, *self.context.pair_columns)))

    def _mask(self, data: bytes, fps: Any) -> tuple[str, bytes]:
        """(member, bytes) of the pair's mask in ``mask_format``: the upstream bytes when they are in it already,
        else converted losslessly (an ``.npz`` mask becomes a grey video at the clip's fps, or the other way)."""
        wanted = self.params.mask_format
        if mask_format_of(data) == wanted:
            return (MKV_MEMBER if wanted == "mkv" else NPZ_MEMBER), data
        masks = read_masks(data)
        if wanted == "npz":
            return NPZ_MEMBER, npz_bytes(masks=masks)
        return MKV_MEMBER, encode_masks(masks, fps=float(fps) if fps else 16.0)


    @classmethod
    def finalize(cls, name: str, run: Storage, params: Params) -> None:
        """``export/dataset.parquet`` (every accepted pair with its columns) and ``export/README.md``."""
        assert isinstance(params, ExportParams)
        import pyarrow.dataset as pads  # not at module level: it pulls in pandas (0.24 s for every config load)

        tables = [table.replace_schema_metadata(None) for table in committed_tables(run, name)]
        everything = pa.concat_tables(tables) if tables else pa.table({})
        table = everything.filter(pads.field("status") == Status.OK.value) if tables else everything
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        dataset, readme = cls.finalize_outputs_for(params)
        run.write_bytes(dataset, buffer.getvalue())
        card = dataset_card(params.dataset_name, params.folder, everything, len(tables), params.select,
                            params.model_dump(), params.mask_format)
        run.write_bytes(readme, card.encode())


def decision_of(columns: dict[str, Any]) -> tuple[str | None, str]:
    """(accept | reject | None without a judge, who decided): a reviewer's label overrules the judge's verdict."""
    label = columns.get("label")
    if label in (ACCEPT, REJECT):
        return label, f"reviewer {columns.get('label_reviewer') or '?'}"
    verdict = columns.get("verdict")
    return (verdict if verdict in (ACCEPT, REJECT) else None), "judge"


def _left_out(columns: dict[str, Any], select: str) -> str | None:
    """Why this pair is not written by an export that keeps ``select`` pairs, or None to write it."""
    decision, by = decision_of(columns)
    if decision is None or select == "all":
        return None
    if decision == REJECT and select == "accepted":
        if by == "judge":
            return "rejected by the judge: " + "; ".join(columns.get("reject_reasons") or ["no reason given"])
        note = columns.get("label_note")
        return f"rejected by {by}" + (f": {note}" if note else "")
    if decision == ACCEPT and select == "rejected":
        return f"accepted by {'the judge' if by == 'judge' else by} (this export keeps rejected pairs)"
    return None
