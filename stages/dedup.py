"""Near-duplicate removal across the whole run (run-wide: every clip of the run is seen before one is decided).

Each clip reaching this stage carries ingest's perceptual ``signature`` (``media/signature.py``). One greedy walk
over every clip of the run (``media/dedup.py``), largest source picture first and then by sample id, keeps a clip
unless an earlier kept clip is within ``max_distance`` bits of it; the others are ``filtered`` naming the clip kept
(``duplicate_of``). The walk depends only on the clips, so a resume, or another worker, makes the same choice.

``seen_runs``: earlier run folders whose kept clips count as kept before any clip of this run (inputs added in a new
run folder that names the earlier run as already seen). Their clips are read from the manifests of the stage of
the same name there (this stage writes the ``signature`` of each clip it keeps for that reason). The earlier runs
are read as they are when this stage's shards run: finish them first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import pyarrow as pa
from pydantic import Field

from manifests.layout import MANIFEST_PATTERN, manifests_dir
from manifests.manifest import Status
from manifests.parquet import read_parquet
from manifests.storage import Storage, without_credentials
from media.dedup import MAX_DISTANCE, Duplicate, near_duplicates
from pipeline.stage import Params, Result, Sample, Stage, StageContext

log = logging.getLogger("ffp.dedup")


class DedupParams(Params):
    max_distance: int = Field(MAX_DISTANCE, ge=0, le=24, description=(
        "bits (of the 256 of a signature) within which two clips are near-duplicates: re-encoded, rescaled or "
        "letterboxed copies measure 0-8, other moments of one static shot 18-30, other scenes 90 and more; the "
        "search slows fast above 20 (bench/bench_dedup.py)"))
    seen_runs: list[str] = Field(default_factory=list, description=(
        "earlier run folders whose kept clips count as already seen: a clip near one of theirs is filtered"))


class Dedup(Stage):
    version = "1"
    Params = DedupParams
    run_wide = True
    reads = ("signature", "src_width", "src_height")
    columns: ClassVar[dict[str, pa.DataType]] = {
        "signature": pa.string(), "duplicate_of": pa.string(), "duplicate_distance": pa.int32(),
    }

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self._decided: tuple[str, dict[str, Duplicate | None]] | None = None
        self._seen_in: dict[str, str] = {}  # a seen clip's id -> the earlier run it is in
        self._seen_signatures: list[str] = []

    def setup(self) -> None:
        """Read the earlier runs' kept clips once per actor: a seen run that is not one fails here, before any
        sample, with what to do."""
        for url in self.params.seen_runs:
            run = Storage(url)
            files = run.list(manifests_dir(self.context.name), pattern=MANIFEST_PATTERN)
            if not files:
                raise ValueError(f"seen run {without_credentials(url)} has no committed {self.context.name!r} "
                                 "shards: name a finished run whose near-duplicate stage has this name")
            for rel in files:
                table = read_parquet(run, rel, columns=["sample_id", "status", "signature"])
                for sample_id, status, signature in zip(*(table.column(c).to_pylist()
                                                          for c in ("sample_id", "status", "signature"))):
                    if status == Status.OK and signature and sample_id not in self._seen_in:  # the first run wins
                        self._seen_in[sample_id] = without_credentials(url)
                        self._seen_signatures.append(signature)

    def process(self, samples: Sequence[Sample]) -> list[Result]:
        decisions = self._decisions()
        results = []
        for sample in samples:
            signature = sample.columns.get("signature")
            if not signature:
                results.append(Result.failed(sample.sample_id, "no signature: set ingest's `signature: true`"))
                continue
            duplicate = decisions[sample.sample_id]
            if duplicate is None:
                results.append(Result.ok(sample.sample_id, signature=signature))
            else:
                where = f" in {self._seen_in[duplicate.of]}" if duplicate.of in self._seen_in else ""
                results.append(Result.filtered(
                    sample.sample_id, f"near duplicate of {duplicate.of}{where} ({duplicate.distance} bits apart)",
                    duplicate_of=duplicate.of, duplicate_distance=duplicate.distance,
                ))
        return results

    def _decisions(self) -> dict[str, Duplicate | None]:
        """The walk over the whole run, made once per state of the run (``StageContext.run_state``)."""
        assert self.context.run_rows is not None, "a run-wide stage runs with its run's rows"
        if self._decided is None or self._decided[0] != self.context.run_state:
            rows = self.context.run_rows()
            clips = [row for row in rows if row.get("signature")]
            found = near_duplicates(
                [row["sample_id"] for row in clips], [row["signature"] for row in clips],
                rank=[-float((row.get("src_width") or 0) * (row.get("src_height") or 0)) for row in clips],
                max_distance=self.params.max_distance, seen_ids=list(self._seen_in),
                seen_signatures=self._seen_signatures,
            )
            self._decided = (self.context.run_state, {row["sample_id"]: dup for row, dup in zip(clips, found)})
            kept = sum(dup is None for dup in found)
            log.info("%s: %d clips, %d kept, %d near-duplicates (%d seen before)", self.context.name, len(clips),
                     kept, len(clips) - kept, len(self._seen_in))
        return self._decided[1]
