"""``ffp report``: the static HTML report of a judged run, checked in headless Chromium from file://.

The run is real and small: ingest -> synth_augment -> judge (model-free metrics only) -> export on generated VOS
clips, with a ``psnr_outside`` bound put between the scores the clips get, so some pairs are rejected. Every count the
page shows is compared with the manifests.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.report import ReportError, build_report
from manifests.labels import new_label, save_labels
from manifests.storage import Storage
from pipeline.config import PipelineConfig, config_to_yaml
from tests.browser import Page, browser, save_screenshot
from tests.conftest import FAST_INGEST, cli_invoke, make_config, manifest_rows, run_local

SYNTH_PAIR = {"src": "aug.mp4", "edit": "clip.mp4", "edit0": "frame0.png", "mask": "aug_mask.npz"}
SYNTH_TASKS = ("removal", "fill", "color")
PAYLOAD = '<img src=x onerror="window.__pwned = 1">'


def judged_config(run_dir: Path, vos: Path, psnr_min: float | None) -> PipelineConfig:
    bounds = {task: {"psnr_outside": {"min": psnr_min} if psnr_min is not None else None} for task in SYNTH_TASKS}
    return make_config(
        run_dir,
        inputs=[{"kind": "vos", "path": str(vos), "fps": 16}],
        stages={
            "ingest": {"type": "ingest", "params": {**FAST_INGEST, "max_clips": 2}},
            # equal shares: the 8 pairs almost surely span several tasks (sample ids, so draws, follow the tmp path)
            "augment": {"type": "synth_augment", "params": {
                "seed": 0, "crf": 30, "preset": "ultrafast",
                "proportions": {"copy_paste": 1, "mask_fill": 1, "color_fill": 1}}},
            "judge": {"type": "judge", "params": {**SYNTH_PAIR, "clip": None, "dino": None, "leak": None,
                                                  "thresholds": bounds}},
            "export": {"type": "export", "params": {"dataset_name": "report-test"}},
        },
    )


def judged_run(root: Path) -> tuple[PipelineConfig, float]:
    """A finished run whose judge rejects some pairs on ``psnr_outside``: judged once without that bound, then with
    a bound in the widest gap of the middle half of the scores seen (only the judge and export run again).
    Returns the config (its ``run.yaml`` written as ``ffp run`` does) and the bound."""
    from media.demo_media import make_demo_vos

    vos = make_demo_vos(root / "vos", num_sequences=4, num_frames=20)
    run_local(judged_config(root / "run", vos, None))
    scores = sorted(r["score_psnr_outside"] for r in manifest_rows(root / "run", "judge") if r["score_psnr_outside"])
    assert len(scores) >= 4, scores
    middle = range(len(scores) // 4, 3 * len(scores) // 4)
    gap = max(middle, key=lambda i: scores[i + 1] - scores[i])
    bound = round((scores[gap] + scores[gap + 1]) / 2, 3)
    config = judged_config(root / "run", vos, bound)
    run_local(config, finalize=True)  # the judge's params changed: its shards and export's are stale, and rerun
    (root / "run" / "run.yaml").write_text(config_to_yaml(config))
    return config, bound


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    config, bound = judged_run(root)
    judge = manifest_rows(root / "run", "judge")
    result = build_report(str(root / "run"))
    return {"dir": root / "run", "config": config, "bound": bound, "judge": judge, "result": result}


@pytest.fixture(scope="module")
def chromium() -> Any:
    with browser() as launched:
        yield launched


@pytest.fixture()
def page(chromium: Any) -> Any:
    opened = Page(chromium)
    yield opened
    opened.close()


def open_report(page: Page, index: str | Path) -> Any:
    page.page.goto(Path(index).as_uri())
    page.page.wait_for_selector("body[data-ready='1']")
    return page.page


def shown(p: Any) -> int:
    return int(p.get_attribute("#shown-count", "data-count"))


def rejected(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok" and r["verdict"] == "reject"]


# The fixture itself ---------------------------------------------------------------------------------------------


def test_the_fixture_rejects_some_pairs_and_exports_the_others(run):
    judge = run["judge"]
    assert len(judge) == 8 and all(r["status"] == "ok" for r in judge)
    assert 0 < len(rejected(judge)) < len(judge)
    exported = {r["sample_id"] for r in manifest_rows(run["dir"], "export") if r["status"] == "ok"}
    assert exported == {r["sample_id"] for r in judge if r["verdict"] == "accept"}


# The page -----------------------------------------------------------------------------------------------------


def test_report_loads_cleanly_with_every_pair_and_the_run_summary(run, page, tmp_path):
    p = open_report(page, run["result"].index)
    judge = run["judge"]
    assert shown(p) == len(judge)
    assert p.locator("#grid .card").count() == len(judge)  # 8 pairs: one page
    assert p.locator("#grid .card.rejected").count() == len(rejected(judge))
    assert p.locator("#grid .card img[loading=lazy]").count() == len(judge)  # thumbnails, not videos
    assert p.locator("#grid video").count() == 0
    summary = p.text_content(".judge-counts[data-stage=judge]")
    accepted = sum(r["verdict"] == "accept" for r in judge)
    assert f"{len(judge)} pairs, {accepted} accepted, {len(rejected(judge))} rejected, 0 failed" in summary
    assert f"export (export/, accepted): {accepted} written, {len(judge) - accepted} left out" in summary
    stages = [p.get_attribute(f"#stages tbody tr:nth-child({i + 1})", "data-stage") for i in range(4)]
    assert stages == ["ingest", "augment", "judge", "export"]
    assert p.text_content("#stages tbody tr[data-stage=judge] td:nth-child(3)") == "2/2"  # shards done/total
    shot = save_screenshot(p, tmp_path / "report.png", "report-screenshot.png")
    assert shot.stat().st_size > 10_000
    assert page.errors == []


def test_filters_by_task_and_status_show_the_manifest_counts(run, page):
    p = open_report(page, run["result"].index)
    judge = run["judge"]
    tasks = Counter(r["task"] for r in judge)
    assert len(tasks) >= 2, tasks  # the filter has something to tell apart
    for task, count in tasks.items():
        p.select_option("#f-task", label=task)
        assert shown(p) == count == p.locator("#grid .card").count()
        for card in p.locator("#grid .card .badge.task").all_text_contents():
            assert card == task
    p.select_option("#f-task", value="-1")
    expected = {
        "accepted": sum(r["status"] == "ok" and r["verdict"] == "accept" for r in judge),
        "rejected": len(rejected(judge)),
        "failed": sum(r["status"] != "ok" for r in judge),
        "labelled": 0,
        "unlabelled": len(judge),
        "all": len(judge),
    }
    for status, count in expected.items():
        p.select_option("#f-status", value=status)
        assert shown(p) == count, status
    task, _ = tasks.most_common(1)[0]
    p.select_option("#f-status", value="rejected")
    p.select_option("#f-task", label=task)
    assert shown(p) == sum(r["task"] == task for r in rejected(judge))
    assert page.errors == []


def test_a_pair_opens_with_playable_clips_mask_overlay_scores_and_reasons(run, page):
    p = open_report(page, run["result"].index)
    row = rejected(run["judge"])[0]
    p.click(f"#grid .card[data-id='{row['sample_id']}']")
    p.wait_for_selector("#pair[open]")
    assert p.text_content("#d-title") == row["sample_id"]
    p.wait_for_selector("#d-reasons li")
    assert p.locator("#d-reasons li").all_text_contents() == row["reject_reasons"]
    assert "Remove" in p.text_content("#d-text") or row["task"] != "removal"  # the instruction, from upstream
    psnr = p.locator("#d-scores tr[data-check=psnr_outside]")
    assert psnr.get_attribute("class") == "failing"
    assert float(psnr.locator("td").nth(1).text_content()) == pytest.approx(row["score_psnr_outside"], abs=1e-3)
    assert psnr.locator("td").nth(2).text_content() == f"≥ {run['bound']:g}"

    p.evaluate("document.getElementById('d-src').play()")
    p.wait_for_function("document.getElementById('d-src').currentTime > 0")
    assert p.evaluate("document.getElementById('d-src').videoWidth") == FAST_INGEST["width"]
    overlay = p.locator("#d-src-mask")
    assert overlay.is_hidden()
    p.check("#d-mask")
    assert overlay.is_visible() and p.locator("#d-edit-mask").is_visible()
    p.wait_for_function("document.getElementById('d-src-mask').dataset.frame !== undefined")
    box, video = overlay.bounding_box(), p.locator("#d-src").bounding_box()
    assert box == pytest.approx(video, abs=1)  # painted over the clip, the same size
    p.uncheck("#d-mask")
    assert overlay.is_hidden()
    p.click("#d-close")
    assert p.locator("#pair[open]").count() == 0
    assert page.errors == []


def test_histograms_for_every_score_with_threshold_lines(run, page):
    p = open_report(page, run["result"].index)
    judge = run["judge"]
    scored = sorted(k for k in judge[0] if k.startswith("score_") and any(r[k] is not None for r in judge))
    assert "score_psnr_outside" in scored and "score_clip_temporal" not in scored  # no CLIP model in this run
    assert sorted(p.locator("figure.hist").evaluate_all("els => els.map(e => e.dataset.column)")) == scored
    bounds = [json.loads(r["judge_thresholds"]) for r in judge]  # per task; the page draws each distinct one
    for column in scored:
        lines = p.locator(f"figure.hist[data-column={column}] line.threshold")
        distinct = {(kind, v) for b in bounds for kind, v in b.get(column[len("score_"):], {}).items()}
        expected = sorted(v for _, v in distinct)
        values = sorted(float(v) for v in lines.evaluate_all("els => els.map(e => e.dataset.value)"))
        assert values == pytest.approx(expected), column
        bars = p.locator(f"figure.hist[data-column={column}] rect.bar").count()
        assert bars >= 1
    assert p.locator("figure.hist[data-column=score_psnr_outside] line.threshold.min").count() == 1
    assert p.locator("figure.hist[data-column=score_psnr_outside] rect.bar.r").count() >= 1
    assert page.errors == []


def test_reasons_table_counts_the_failing_check_and_opens_examples(run, page):
    p = open_report(page, run["result"].index)
    failing = Counter(c for r in run["judge"] for c in r["reject_checks"] or [])
    assert failing["psnr_outside"] == len(rejected(run["judge"]))
    rows = p.locator("table.reasons tbody tr")
    assert sorted(rows.evaluate_all("els => els.map(e => e.dataset.check)")) == sorted(failing)
    row = p.locator("table.reasons tr[data-check=psnr_outside]")
    assert int(row.locator("td.n").text_content()) == failing["psnr_outside"]
    example = row.locator("td.examples button").first
    sample_id = example.text_content()
    assert sample_id in {r["sample_id"] for r in rejected(run["judge"])}
    example.click()
    p.wait_for_selector("#pair[open]")
    assert p.text_content("#d-title") == sample_id
    assert page.errors == []


# Untrusted text, media cap, errors --------------------------------------------------------------------------


def _rewrite_manifest(path: Path, change: dict[str, Any], sample_id: str) -> None:
    table = pq.read_table(path)
    rows = table.to_pylist()
    for row in rows:
        if row["sample_id"] == sample_id:
            row.update(change)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)  # keeps the commit metadata


def test_text_from_the_run_renders_as_text(run, page, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run["dir"], copy)
    shutil.rmtree(copy / "report")
    row = rejected(run["judge"])[0]
    sid = row["sample_id"]
    _rewrite_manifest(copy / f"manifests/judge/shard-{row['shard']:06d}.parquet",
                      {"reject_reasons": [PAYLOAD], "task": PAYLOAD}, sid)
    _rewrite_manifest(copy / f"manifests/augment/shard-{row['shard']:06d}.parquet", {"instruction": PAYLOAD}, sid)
    save_labels(Storage(str(copy)), [new_label("judge", sid, row["shard"], "reject", PAYLOAD, note=PAYLOAD)])
    p = open_report(page, build_report(str(copy)).index)
    p.click(f"#grid .card[data-id='{sid}']")
    p.wait_for_selector("#d-reasons li")
    assert p.text_content("#d-reasons li") == PAYLOAD
    assert PAYLOAD in p.text_content("#d-text")
    assert PAYLOAD in p.text_content("#d-badges")  # task, reviewer and note
    assert p.locator(f"#f-task option:text-is('{PAYLOAD}')").count() == 1
    assert p.locator("img[src=x]").count() == 0
    assert p.evaluate("window.__pwned") is None
    assert page.errors == []


def test_media_is_capped_deterministically_with_rejected_pairs_first(run, page, tmp_path):
    # rejected pairs of every task first (at most 3 tasks here), so 4 slots hold rejected and accepted ones
    first = build_report(str(run["dir"]), str(tmp_path / "a"), max_media=4)
    again = build_report(str(run["dir"]), str(tmp_path / "b"), max_media=4)
    media = sorted(f for f in first.files if f.endswith(".src.mp4"))
    assert len(media) == 4 and media == sorted(f for f in again.files if f.endswith(".src.mp4"))
    with_media = {f.rsplit("/", 1)[1].removesuffix(".src.mp4") for f in media}
    rejected_tasks = {r["task"] for r in rejected(run["judge"])}
    assert {r["task"] for r in rejected(run["judge"]) if r["sample_id"] in with_media} == rejected_tasks
    assert with_media & {r["sample_id"] for r in run["judge"] if r["verdict"] == "accept"}
    assert first.pairs == len(run["judge"])
    p = open_report(page, first.index)
    assert p.locator("#grid .card .nomedia").count() == len(run["judge"]) - 4
    assert "copied for 4 of 8 pairs" in p.text_content("#media-note")
    no_media = p.locator("#grid .card:has(.nomedia)").first
    no_media.click()
    p.wait_for_selector("#d-scores tbody tr")  # scores and reasons still there
    assert p.locator("#d-nomedia").is_visible() and p.locator("#d-media").is_hidden()
    assert page.errors == []


def test_report_cli_writes_the_report_and_explains_bad_folders(run, tmp_path):
    code, out, err = cli_invoke(["report", str(run["dir"]), "--report-dir", str(tmp_path / "rep"), "--max-media", "2"])
    assert code == 0, err
    assert "8 pairs (2 with media)" in out and (tmp_path / "rep" / "index.html").is_file()
    code, _, err = cli_invoke(["report", str(tmp_path)])
    assert code == 2 and "not a run folder" in err
    no_judge = make_config(tmp_path / "plain", inputs=[{"kind": "vos", "path": str(tmp_path), "fps": 16}],
                           stages={"ingest": {"type": "ingest", "params": FAST_INGEST}})
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "run.yaml").write_text(config_to_yaml(no_judge))
    code, _, err = cli_invoke(["report", str(tmp_path / "plain")])
    assert code == 2 and "no judge stage" in err
    with pytest.raises(ReportError, match="max-media"):
        build_report(str(run["dir"]), max_media=-1)


# Gates of raw-video ingest ------------------------------------------------------------------------------------------

GATES = ("brightness", "contrast", "sharpness", "motion")


def report_data(out: Path | str) -> dict[str, Any]:
    """``window.FFP_REPORT`` as the page gets it, from ``data.js``."""
    text = Path(out, "data.js").read_text().rstrip()
    prefix = "window.FFP_REPORT = JSON.parse("
    assert text.startswith(prefix) and text.endswith(");")
    return json.loads(json.loads(text[len(prefix):-2]))


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished curate-videos run (ingest with shots and every gate, no judge) on raw footage: 4 clips of an edited
    video and a slowed one kept, a still and a dark video filtered."""
    from tests.test_raw_presets import raw_config, raw_footage

    root = tmp_path_factory.mktemp("curated")
    config = raw_config("curate-videos", raw_footage(root / "videos"), root / "run", small=True)
    run_local(config)
    (root / "run" / "run.yaml").write_text(config_to_yaml(config))
    rows = manifest_rows(root / "run", "ingest")
    result = build_report(str(root / "run"))
    return {"dir": root / "run", "rows": rows, "result": result, "data": report_data(result.out)}


def test_a_run_with_gates_and_no_judge_gets_a_report_of_its_gates(curated):
    data, rows = curated["data"], curated["rows"]
    assert data["judges"] == [] and curated["result"].pairs == 0
    (gates,) = data["gates"]
    status = Counter(r["status"] for r in rows)
    assert status == {"ok": 5, "filtered": 2}
    assert gates["stage"] == "ingest" and gates["counts"] == {"rows": 7, "ok": 5, "filtered": 2, "failed": 0}
    assert {r["reason"]: r["count"] for r in gates["reasons"]} == {"static": 1, "too dark": 1}
    assert [h["column"] for h in gates["histograms"]] == list(GATES)
    for h in gates["histograms"]:
        column = h["column"]
        # the thresholds are the ones each row was measured against
        expected = sorted({(kind, r[f"{column}_{kind}"]) for r in rows for kind in ("min", "max")
                           if f"{column}_{kind}" in r and r[f"{column}_{kind}"] is not None})
        assert sorted((t["kind"], t["value"]) for t in h["thresholds"]) == expected, column  # float32 both ways
        assert h["lo"] < min(v for _, v in expected) and h["hi"] > max(v for _, v in expected)
        # each row in its bin, ok rows in "a", filtered ones in "r"
        for key, wanted in (("a", "ok"), ("r", "filtered")):
            counts = [0] * h["bins"]
            for r in rows:
                if r["status"] == wanted:
                    counts[min(h["bins"] - 1, int((r[column] - h["lo"]) / (h["hi"] - h["lo"]) * h["bins"]))] += 1
            assert h["counts"][key] == counts, (column, key)
        assert sum(h["counts"]["o"]) == 0 and h["missing"] == h["below"] == h["above"] == 0
    # the still's row lies left of the motion threshold, the dark one's left of the brightness minimum
    by_column = {h["column"]: h for h in gates["histograms"]}
    for column, reason in (("motion", "static"), ("brightness", "too dark")):
        h = by_column[column]
        (row,) = [r for r in rows if r["reason"] and r["reason"].startswith(reason)]
        assert row[column] < row[f"{column}_min"] and h["lo"] <= row[column]


def test_the_page_draws_each_gate_with_its_thresholds_and_no_judge_sections(curated, page, tmp_path):
    p = open_report(page, curated["result"].index)
    assert p.locator("#gates-section").is_visible()
    for hidden in ("#filters", "#reasons-section", "#hist-section", "#pairs-section"):
        assert p.locator(hidden).is_hidden(), hidden
    assert p.text_content(".gate-counts[data-stage=ingest]") == "ingest (ingest): 7 rows, 5 ok, 2 filtered, 0 failed"
    figures = p.locator("#gates figure.hist.gate")
    assert figures.evaluate_all("els => els.map(e => e.dataset.column)") == list(GATES)
    for h in curated["data"]["gates"][0]["histograms"]:
        lines = p.locator(f"#gates figure[data-column={h['column']}] line.threshold")
        values = sorted(float(v) for v in lines.evaluate_all("els => els.map(e => e.dataset.value)"))
        assert values == pytest.approx(sorted(t["value"] for t in h["thresholds"]))
        bars = p.locator(f"#gates figure[data-column={h['column']}] rect.bar")
        assert bars.count() >= 1
    assert p.locator("#gates figure[data-column=motion] line.threshold.min").count() == 1
    assert p.locator("#gates figure[data-column=brightness] line.threshold.max").count() == 1
    motion = next(h for h in curated["data"]["gates"][0]["histograms"] if h["column"] == "motion")
    red = p.locator("#gates figure[data-column=motion] rect.bar.r")
    assert red.count() == sum(n > 0 for n in motion["counts"]["r"])  # the still and the dark clip
    line = float(p.get_attribute("#gates figure[data-column=motion] line.threshold", "x1"))
    assert min(float(x) for x in red.evaluate_all("els => els.map(e => e.getAttribute('x'))")) < line  # the still
    assert p.text_content("table.gate-reasons tr[data-reason=static] td.n") == "1"
    shot = save_screenshot(p, tmp_path / "gates.png", "report-gates-screenshot.png")
    assert shot.stat().st_size > 10_000
    assert page.errors == []


def test_report_cli_says_it_shows_the_gates(curated, tmp_path):
    code, out, err = cli_invoke(["report", str(curated["dir"]), "--report-dir", str(tmp_path / "rep")])
    assert code == 0, err
    assert "0 pairs (0 with media), the gates of ingest" in out and (tmp_path / "rep" / "index.html").is_file()
    assert report_data(tmp_path / "rep")["gates"] == curated["data"]["gates"]


def test_a_judged_run_without_gates_has_no_gate_section(run, page):
    assert report_data(run["result"].out)["gates"] == []  # ingest declares the gate columns; no row has a value
    p = open_report(page, run["result"].index)
    assert p.locator("#gates-section").is_hidden() and p.locator("#pairs-section").is_visible()
    assert page.errors == []


def test_a_run_without_judge_and_with_its_gates_off_is_refused(curated, tmp_path):
    config = make_config(tmp_path / "run", inputs=[{"kind": "videos", "path": str(curated["dir"].parent / "videos")}],
                         stages={"ingest": {"type": "ingest", "params": FAST_INGEST}})
    run_local(config)
    (tmp_path / "run" / "run.yaml").write_text(config_to_yaml(config))
    assert manifest_rows(tmp_path / "run", "ingest")
    with pytest.raises(ReportError, match="no judge stage and no gate values"):
        build_report(str(tmp_path / "run"))


def test_a_gate_histogram_spans_the_bulk_of_many_values_and_counts_the_rest():
    import numpy as np

    from app.report import GATE_CLIP_ROWS, HIST_BINS, STATE_ACCEPTED, STATE_REJECTED, gate_histogram

    values = np.concatenate([np.linspace(100, 900, GATE_CLIP_ROWS * 2), [20_000.0, 5.0, np.nan]])
    state = np.where(values < 15, STATE_REJECTED, STATE_ACCEPTED).astype(np.int8)
    h = gate_histogram(values, state, {"min": np.full(len(values), 15.0)})
    assert h["thresholds"] == [{"kind": "min", "value": 15.0}]
    assert h["lo"] < 5.0 and 900 < h["hi"] < 1000  # the threshold and the 1st-99th percentile, not the 20,000
    assert h["above"] == 1 and h["below"] == 0 and h["missing"] == 1
    assert h["counts"]["a"][-1] >= 1 and sum(h["counts"]["a"]) == GATE_CLIP_ROWS * 2 + 1
    assert h["counts"]["r"][0] == 1 and len(h["counts"]["a"]) == HIST_BINS
