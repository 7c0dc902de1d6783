"""The paths-and-records half of the bad-input corpus (``tests/data/bad/paths.py``): inputs whose *name*, kind or
source is the problem, and the records a run keeps of them (issue 22, "Inputs and records").

Each case lists through ``media.sources`` and, where the file must also ingest, runs through the Ingest stage
(in this process, or on Ray for the inputs that hang): a name that is not UTF-8, symlinked folders, names that
look like URLs, FIFOs and sockets, the containers ``VIDEO_EXTENSIONS`` lists, one file named many ways, files
with the same bytes, quarantined rows, ``ffp query`` before anything is committed, and inputs that never finish
arriving (ended by the source stage's default ``timeouts.sample_s``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from manifests.partial import PartialStore
from manifests.storage import Storage
from manifests.verify import verify_run
from media import sources
from media.sources import (
    IDENTICAL_TO,
    VIDEO_EXTENSIONS,
    NotRegularFile,
    display_uri,
    input_fs,
    list_files,
    list_inputs,
    source_columns,
    source_id_for,
)
from pipeline.config import InputSpec, config_to_yaml
from pipeline.graph import build_graph, digest
from pipeline.plan import list_sources, read_sources, write_sources
from pipeline.stage import SOURCE_SAMPLE_TIMEOUT_S
from pipeline.worker import ShardWorker
from stages.ingest import Ingest
from tests.conftest import FAST_INGEST, LocalRun, cli_invoke, make_config, manifest_rows, run_local
from tests.data.bad import paths
from tests.data.bad.media import good_clip


def ingest_config(run_dir: Path, *inputs: dict[str, Any], shard_size: int = 8, max_attempts: int = 3,
                  timeouts: dict[str, float] | None = None) -> Any:
    stage: dict[str, Any] = {"type": "ingest", "params": FAST_INGEST}
    if timeouts:
        stage["timeouts"] = timeouts
    return make_config(run_dir, inputs=list(inputs), stages={"ingest": stage}, shard_size=shard_size,
                       max_attempts=max_attempts)


def videos(path: Path | str) -> dict[str, str]:
    return {"kind": "videos", "path": str(path)}


def rows_by_uri(run_dir: Path) -> dict[str, dict[str, Any]]:
    rows = manifest_rows(run_dir, "ingest")
    by_uri = {row["source_uri"]: row for row in rows}
    assert len(by_uri) == len(rows), "two rows name the same input"
    return by_uri


# 1. A file name that is not UTF-8 --------------------------------------------------------------------------------


def test_a_non_utf8_name_gets_a_stable_readable_id(tmp_path):
    """It used to abort the whole listing with a UnicodeEncodeError in ``source_id_for``."""
    bad = paths.non_utf8_name(tmp_path / "in")
    good_clip(tmp_path / "in/good.mp4")
    rows = {row["uri"]: row for row in list_inputs([InputSpec(kind="videos", path=str(tmp_path / "in"))])}
    assert set(rows) == {str(bad), str(tmp_path / "in/good.mp4")}
    row = rows[str(bad)]
    assert re.fullmatch(r"caf_clip-[0-9a-f]{16}", row["source_id"])
    assert row["source_id"] == source_id_for(str(bad))  # the same every time: the hash of the name's bytes
    assert row["source_id"].removeprefix("caf_clip-") == hashlib.sha1(os.fsencode(bad)).hexdigest()[:16]
    assert source_id_for(str(tmp_path / "in/good.mp4")) == source_id_for(str(tmp_path / "in/good.mp4"))


def test_a_non_utf8_name_survives_the_frozen_sources(tmp_path):
    """``write_sources`` stores each row as JSON: the surrogate-escaped name round-trips, digest included."""
    bad = paths.non_utf8_name(tmp_path / "in")
    config = ingest_config(tmp_path / "run", videos(tmp_path / "in"))
    rows = list_sources(build_graph(config), "ingest")
    storage = Storage(str(tmp_path / "run"))
    write_sources(storage, "ingest", rows)
    again = read_sources(storage, "ingest")
    assert again == rows and again[0]["uri"] == str(bad)
    assert os.path.exists(again[0]["uri"])  # still names the file
    assert digest(again) == digest(rows)


def test_display_uri_shows_undecodable_bytes_and_leaves_text_alone():
    assert display_uri(os.fsdecode(b"/d/caf\xe9 \xff clip.mp4")) == "/d/caf\\xe9 \\xff clip.mp4"
    assert display_uri("/d/café ☕.mp4") == "/d/café ☕.mp4"
    assert display_uri("s3://b/a::b.mp4") == "s3://b/a::b.mp4"
    assert display_uri("/d/\ud800.mp4").encode("utf-8")  # any lone surrogate: still valid UTF-8 out


def test_a_folder_with_a_non_utf8_name_ingests_both_files(tmp_path):
    """Through ingest.py, which writes ``display_uri(uri)`` into ``source_uri`` (without it the commit of the
    shard fails: Arrow refuses a surrogate in a string column)."""
    paths.non_utf8_name(tmp_path / "in")
    good_clip(tmp_path / "in/good.mp4")
    run_dir = tmp_path / "run"
    run_local(ingest_config(run_dir, videos(tmp_path / "in")))
    by_uri = rows_by_uri(run_dir)
    shown = f"{tmp_path}/in/{paths.NON_UTF8_DISPLAY}"
    assert set(by_uri) == {shown, str(tmp_path / "in/good.mp4")}
    assert by_uri[shown]["status"] == "ok" and by_uri[shown]["source_id"].startswith("caf_clip-")
    assert by_uri[str(tmp_path / "in/good.mp4")]["status"] == "ok"
    assert verify_run(Storage(str(run_dir))).ok


# 2. Symlinked sub-folders ---------------------------------------------------------------------------------------


def test_symlinked_sub_folders_are_followed_once_without_looping(tmp_path):
    """``linked`` -> ``../elsewhere`` is followed; ``self`` -> ``.``, ``real/up`` -> ``..`` and ``again`` -> ``real``
    add nothing (each real folder is walked once, under its own path)."""
    made = paths.symlinked_folders(tmp_path)
    started = time.monotonic()
    listed = list_files(str(made["folder"]), VIDEO_EXTENSIONS, "video")
    assert listed == [str(made["b"]), str(made["a"])]  # sorted: linked/ before real/
    assert time.monotonic() - started < 5
    rows = list_inputs([InputSpec(kind="videos", path=str(made["folder"]))])
    assert sorted(row["uri"] for row in rows) == sorted(listed) and not any(IDENTICAL_TO in r for r in rows)


def test_a_link_to_an_ancestor_of_the_input_folder_adds_its_files_once(tmp_path):
    """``videos/real/up`` points above ``real``; listing from ``real`` follows it to ``videos``, which holds ``real``
    again: the walk stops there, so ``a.mp4`` is listed once (as ``real/a.mp4``)."""
    made = paths.symlinked_folders(tmp_path)
    listed = list_files(str(made["folder"] / "real"), VIDEO_EXTENSIONS, "video")
    assert listed.count(str(made["a"])) == 1 and not any(p.endswith("/a.mp4") and p != str(made["a"]) for p in listed)
    assert str(made["folder"] / "real/up/linked/b.mp4") in listed  # reached through the link, once


# 3. Names that look like URLs, and files that are not regular ---------------------------------------------------


def test_input_fs_takes_local_paths_literally(tmp_path):
    (made,) = [p for p in paths.url_looking_names(tmp_path) if p.name == "a::b.mp4"]
    for spelling in (str(made), f"file://{made}", f"{tmp_path}/./a::b.mp4", f"{tmp_path}//a::b.mp4"):
        fs, path = input_fs(spelling)
        assert path == str(made), spelling
        with fs.open(path, "rb") as handle:
            assert handle.read() == made.read_bytes()
    fs, path = input_fs("s3://bucket/a::b.mp4")  # a URL stays a URL
    assert (fs.protocol[0], path) == ("s3", "bucket/a::b.mp4")
    with pytest.raises(ValueError, match="Protocol not known: foo"):
        input_fs("foo://bucket/v.mp4")


def test_input_fs_refuses_special_files_at_once(tmp_path):
    """A FIFO with no writer blocks whoever opens it: ``input_fs`` must say what it is without opening it."""
    made = paths.special_files(tmp_path)
    outcome: dict[str, BaseException] = {}

    def refuse(name: str) -> None:
        try:
            input_fs(str(made[name]))
        except NotRegularFile as exc:
            outcome[name] = exc

    worker = threading.Thread(target=lambda: [refuse(name) for name in made], daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "input_fs blocked on a special file"
    assert {name: str(exc) for name, exc in outcome.items()} == {
        "fifo": "not a regular file: a FIFO", "socket": "not a regular file: a socket"}
    assert isinstance(outcome["fifo"], OSError) and outcome["fifo"].path == str(made["fifo"])
    assert input_fs(str(tmp_path / "missing.mp4"))[1] == str(tmp_path / "missing.mp4")  # opening says "not found"
    assert input_fs(str(tmp_path))[1] == str(tmp_path)  # folders are fine


def test_names_with_url_characters_are_listed_and_ingested_as_files(tmp_path):
    """Through ingest.py, which opens sources with ``input_fs`` (with ``url_to_fs``, ``a::b.mp4`` is read as an
    fsspec chain and fails as not found)."""
    made = paths.url_looking_names(tmp_path / "in")
    listed = list_files(str(tmp_path / "in"), VIDEO_EXTENSIONS, "video")
    assert listed == sorted(str(p) for p in made)
    run_dir = tmp_path / "run"
    run_local(ingest_config(run_dir, videos(tmp_path / "in")))
    by_uri = rows_by_uri(run_dir)
    assert {uri: row["status"] for uri, row in by_uri.items()} == {str(p): "ok" for p in made}, by_uri


def test_a_socket_in_an_input_folder_fails_its_own_row(tmp_path):
    """Through ingest.py, which turns ``NotRegularFile`` into a failed row (without it: quarantined, "OSError:
    [Errno 6] No such device or address"). The FIFO twin, which would block this process, is in the Ray test below."""
    made = paths.special_files(tmp_path / "in")
    os.remove(made["fifo"])
    good_clip(tmp_path / "in/good.mp4")
    run_dir = tmp_path / "run"
    run_local(ingest_config(run_dir, videos(tmp_path / "in")))
    by_uri = rows_by_uri(run_dir)
    row = by_uri[str(made["socket"])]
    assert (row["status"], row["reason"], row["attempts"]) == ("failed", "not a regular file: a socket", 1)
    assert by_uri[str(tmp_path / "in/good.mp4")]["status"] == "ok"


# 4. Containers the decoder reads ----------------------------------------------------------------------------------


def test_every_listed_container_is_listed_from_a_folder_and_ingests(tmp_path):
    made = paths.format_clips(tmp_path / "in")
    assert set(paths.FORMATS) <= set(VIDEO_EXTENSIONS)
    assert list_files(str(tmp_path / "in"), VIDEO_EXTENSIONS, "video") == sorted(str(p) for p in made)
    run_dir = tmp_path / "run"
    run_local(ingest_config(run_dir, videos(tmp_path / "in"), shard_size=16))
    by_uri = rows_by_uri(run_dir)
    assert {Path(uri).suffix: (row["status"], row["reason"]) for uri, row in by_uri.items()} == {
        ext: ("ok", None) for ext in paths.FORMATS}
    assert all((row["width"], row["height"], row["num_frames"]) == (96, 64, 9) for row in by_uri.values())


# 5. One file is one source --------------------------------------------------------------------------------------------


def test_one_file_named_six_ways_in_a_list_is_one_source(tmp_path, caplog):
    """``/./``, ``//``, ``file://``, ``../`` and the plain path twice: once ingested five times, or (the repeat)
    a ``ValueError: duplicate source ids`` that stopped the run."""
    table, made = paths.spellings_csv(tmp_path)
    config = ingest_config(tmp_path / "run", {"kind": "list", "path": str(table)})
    with caplog.at_level(logging.WARNING, logger="ffp.sources"):
        rows = list_sources(build_graph(config), "ingest")
    assert [row["uri"] for row in rows] == [str(made)]
    assert rows[0]["source_id"] == source_id_for(str(made))
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "ffp.sources"]
    assert "5 repeats dropped" in warning and str(made) in warning


def test_a_file_given_by_two_inputs_is_one_source_and_remote_urls_stay_as_written(tmp_path):
    (tmp_path / "d").mkdir()
    made = paths.clip(tmp_path / "d/v.mp4")
    (tmp_path / "urls.csv").write_text("path\nhttp://127.0.0.1:9/a.mp4\nhttp://127.0.0.1:9/a.mp4\n"
                                       "http://127.0.0.1:9//a.mp4\nhttp://127.0.0.1:9/./a.mp4\n")
    rows = list_inputs([InputSpec(kind="videos", path=str(tmp_path / "d")),
                        InputSpec(kind="videos", path=f"{tmp_path}/d/./v.mp4"),
                        InputSpec(kind="list", path=str(tmp_path / "urls.csv"))])
    assert [row["uri"] for row in rows] == [str(made), "http://127.0.0.1:9/a.mp4", "http://127.0.0.1:9//a.mp4",
                                            "http://127.0.0.1:9/./a.mp4"]
    assert len({row["source_id"] for row in rows}) == 4


# 6. Files with the same bytes -----------------------------------------------------------------------------------------


def test_byte_identical_files_are_marked_not_dropped(tmp_path, monkeypatch):
    made = paths.identical_copies(tmp_path / "in")
    good_clip(tmp_path / "in/other_size.mp4", frames=30)
    hashed: list[str] = []
    real_sha256 = sources.file_sha256
    monkeypatch.setattr(sources, "file_sha256", lambda uri: hashed.append(uri) or real_sha256(uri))
    rows = {Path(row["uri"]).name: row for row in list_inputs([InputSpec(kind="videos", path=str(tmp_path / "in"))])}
    assert set(rows) == {"clip.mp4", "copy.mp4", "same_size.mp4", "other_size.mp4"}
    first, later = sorted([rows["clip.mp4"], rows["copy.mp4"]], key=lambda row: row["source_id"])
    assert later[IDENTICAL_TO] == first["source_id"] and IDENTICAL_TO not in first
    assert IDENTICAL_TO not in rows["same_size.mp4"] and IDENTICAL_TO not in rows["other_size.mp4"]
    assert sorted(hashed) == sorted(str(made[key]) for key in ("first", "copy", "same_size"))  # one size group


def test_identical_to_reaches_the_manifest(tmp_path):
    """Through ingest.py, which declares the ``identical_to`` column and copies it from the source row."""
    made = paths.identical_copies(tmp_path / "in")
    run_dir = tmp_path / "run"
    run_local(ingest_config(run_dir, videos(tmp_path / "in")))
    by_uri = rows_by_uri(run_dir)
    first, copy = by_uri[str(made["first"])], by_uri[str(made["copy"])]
    assert {first["status"], copy["status"]} == {"ok"}  # kept: a later curation step may drop them
    assert copy["identical_to"] == first["source_id"] and first["identical_to"] is None
    assert by_uri[str(made["same_size"])]["identical_to"] is None


# 7. Quarantined rows keep their source columns ------------------------------------------------------------------------


def test_quarantined_source_rows_keep_their_source_columns(tmp_path, monkeypatch):
    """Both ways a source ends quarantined: it raised on every attempt (``_process_batch``), or it killed its
    worker on every attempt (``_run``, before it is run again). Its row still says which input it was, its
    ``source_uri`` valid UTF-8 even for a name that is not."""
    bad = paths.non_utf8_name(tmp_path / "in")
    killer = good_clip(tmp_path / "in/killer.mp4")
    good = good_clip(tmp_path / "in/good.mp4", frames=30)
    real_one = Ingest._one

    def raising(self: Ingest, source: dict[str, Any]) -> list[Any]:
        if source["uri"] == str(bad):
            raise RuntimeError("decoder crashed")
        return real_one(self, source)

    monkeypatch.setattr(Ingest, "_one", raising)
    run_dir = tmp_path / "run"
    runner = LocalRun(ingest_config(run_dir, videos(tmp_path / "in"), max_attempts=2))
    killer_id = source_id_for(str(killer))
    partial = PartialStore(runner.storage, "ingest", 0, runner.graph.nodes["ingest"].fingerprint)
    partial.set_attempts(killer_id, 2)  # as a worker killed at it twice leaves it
    runner.run()
    rows = {row["sample_id"]: row for row in manifest_rows(run_dir, "ingest")}
    crashed, killed = rows[source_id_for(str(bad))], rows[killer_id]
    assert crashed["status"] == killed["status"] == "quarantined"
    assert crashed["reason"].startswith("RuntimeError: decoder crashed")
    assert killed["reason"] == "the worker died on each of 2 attempts at this sample"
    assert (crashed["source_id"], crashed["source_uri"]) == (source_id_for(str(bad)), display_uri(str(bad)))
    assert (killed["source_id"], killed["source_uri"]) == (killer_id, str(killer))
    assert killed["clip_index"] is None  # only what the source row says, nothing made up
    assert rows[f"{source_id_for(str(good))}-c000"]["status"] == "ok"


def test_source_columns_are_the_declared_ones_a_source_row_has():
    video = {"source_id": "v-1", "kind": "video", "uri": os.fsdecode(b"/d/\xff.mp4"), "shard": 0}
    assert source_columns(video, Ingest.columns) == {"source_id": "v-1", "source_uri": "/d/\\xff.mp4"}
    pair = {"source_id": "c-s", "kind": "image_pair", "content_uri": "/c.png", "style_uri": "/s.png",
            "stylized_uri": None, "style_name": "s"}
    declared = ("source_id", "content_uri", "style_uri", "stylized_uri", "style_name", "content_width")
    assert source_columns(pair, declared) == {k: v for k, v in pair.items() if k != "kind"}


# 8. ffp query before anything is committed --------------------------------------------------------------------------


def _started_run(tmp_path: Path, *, commit_ingest: bool) -> Path:
    """A run folder as ``ffp run`` leaves it before its first commit (run.yaml, no manifest), or after ingest only."""
    (tmp_path / "in").mkdir()
    good_clip(tmp_path / "in/good.mp4")
    run_dir = tmp_path / "run"
    config = make_config(run_dir, inputs=[videos(tmp_path / "in")], stages={
        "ingest": {"type": "ingest", "params": FAST_INGEST},
        "augment": {"type": "synth_augment", "params": {"crf": 30, "preset": "ultrafast"}}})
    runner = LocalRun(config)
    if commit_ingest:
        runner.run(stages=["ingest"])
    runner.storage.write_bytes("run.yaml", config_to_yaml(config).encode())
    return run_dir


def test_query_on_a_run_with_no_manifest_answers_no_rows(tmp_path):
    run_dir = _started_run(tmp_path, commit_ingest=False)
    for sql in ("select sample_id, reason, source_uri from manifests where status <> 'ok'",
                "select source_id, clip_index from ingest", "select * from augment"):
        code, out, err = cli_invoke(["query", str(run_dir), sql, "--json"])
        assert (code, json.loads(out)) == (0, []), (sql, err)
    code, out, err = cli_invoke(["query", str(run_dir), "select stage, status, count(*) as n from manifests group by all"])
    assert code == 0 and out.splitlines() == ["stage\tstatus\tn"], err  # the column names, no row


def test_query_names_the_columns_of_a_stage_not_committed_yet(tmp_path):
    run_dir = _started_run(tmp_path, commit_ingest=True)
    code, out, err = cli_invoke(["query", str(run_dir), "select stage, status, source_id from manifests", "--json"])
    assert code == 0, err
    assert [(r["stage"], r["status"]) for r in json.loads(out)] == [("ingest", "ok")]
    code, out, err = cli_invoke(["query", str(run_dir), "select sample_id from augment", "--json"])
    assert (code, json.loads(out)) == (0, []), err


# 9. No input can hang a run ------------------------------------------------------------------------------------------


def test_source_stages_have_a_default_sample_time_limit(tmp_path):
    """``ingest_images`` needs ``default_sample_timeout_s = 120.0`` in stages/ingest_images.py (without it, it has
    the 600 s of every source stage)."""
    (tmp_path / "in").mkdir()
    good_clip(tmp_path / "in/good.mp4")
    config = make_config(tmp_path / "run", inputs=[videos(tmp_path / "in"), {"kind": "image_pairs", "path": "x.csv"}],
                         stages={"ingest": {"type": "ingest", "params": FAST_INGEST},
                                 "augment": {"type": "synth_augment"},
                                 "pairs": {"type": "ingest_images"},
                                 "slow": {"type": "ingest", "timeouts": {"sample_s": 1800}}},
                         tracks={"main": ["ingest", "augment"], "style": ["pairs"], "other": ["slow"]})
    assert SOURCE_SAMPLE_TIMEOUT_S == 600
    assert {name: config.sample_timeout_s(name) for name in config.stages} == {
        "ingest": 600, "augment": None, "pairs": 120, "slow": 1800}
    shown = yaml.safe_load(config_to_yaml(config))["stages"]
    assert {name: spec["timeouts"]["sample_s"] for name, spec in shown.items()} == {
        "ingest": 600, "augment": None, "pairs": 120, "slow": 1800}
    graph = build_graph(make_config(tmp_path / "run2", inputs=[videos(tmp_path / "in")],
                                    stages={"ingest": {"type": "ingest", "params": FAST_INGEST}}))
    storage = Storage(str(tmp_path / "run2"))
    assert ShardWorker(storage, graph, "ingest", exit_on_timeout=True).sample_timeout == 600
    assert ShardWorker(storage, graph, "ingest").sample_timeout is None  # enforced in Ray actors only


SAMPLE_S = 3


@pytest.mark.slow
def test_inputs_that_never_finish_end_in_their_rows_within_the_limit(tmp_path, ray_session):
    """On Ray, three shards of two inputs, each a good clip then one that never finishes (``shard_size: 2``,
    ``max_attempts: 2``, ``timeouts.sample_s: 3``):

    * (a) ``b_endless.ts``: a chunked HTTP answer that never ends (a stream's PAT/PMT, then null packets);
    * (b) ``d_stalled.mp4``: HTTP with a Content-Length, the first 1000 bytes, then nothing;
    * (c) ``f_stuck.mp4``: a FIFO in the input folder. Ingest opens it through ``input_fs``, which refuses it
      (``NotRegularFile``, a failed row); opened directly it blocks, and the time limit quarantines it like (b).

    (a) and (b) are quarantined with the time-limit reason, (c) fails at once, and every good clip is committed
    ok beside them. (a) NEEDS media/video_io.py (``_open``) to read a stream of unknown length without seeking
    (fsspec's ``HTTPStreamFile`` says it is seekable, then raises on ``seek``): until then it is quarantined at
    once with "ValueError: Cannot seek streaming HTTP file at http.py:778". Read as a stream, it hangs FFmpeg's
    probe (checked with PyAV), which the time limit ends."""
    folder = tmp_path / "in"
    folder.mkdir()
    for variant, name in enumerate(("a_good.mp4", "c_good.mp4", "e_good.mp4")):
        paths.clip(folder / name, variant=40 + variant)
    os.mkfifo(folder / "f_stuck.mp4")
    with paths.serving() as server:
        endless, stalled = server.url("b_endless.ts"), server.url("d_stalled.mp4")
        (tmp_path / "urls.csv").write_text(f"path\n{endless}\n{stalled}\n")
        config = ingest_config(tmp_path / "run", videos(folder), {"kind": "list", "path": str(tmp_path / "urls.csv")},
                               shard_size=2, max_attempts=2, timeouts={"sample_s": SAMPLE_S})
        config_path = tmp_path / "config.yaml"
        config_path.write_text(config_to_yaml(config))
        started = time.monotonic()
        code, out, err = cli_invoke(["run", str(config_path)])
        seconds = time.monotonic() - started
    assert code == 3, out + err  # finished, with the hanging inputs quarantined
    rows = rows_by_uri(tmp_path / "run")
    assert {Path(uri).name: row["shard"] for uri, row in rows.items()} == {
        "a_good.mp4": 0, "b_endless.ts": 0, "c_good.mp4": 1, "d_stalled.mp4": 1, "e_good.mp4": 2, "f_stuck.mp4": 2}
    for name in ("a_good.mp4", "c_good.mp4", "e_good.mp4"):
        assert rows[str(folder / name)]["status"] == "ok", rows[str(folder / name)]
    limit = f"ran past timeouts.sample_s ({SAMPLE_S} s) on each of 2 attempts at this sample"
    assert (rows[stalled]["status"], rows[stalled]["reason"]) == ("quarantined", limit)
    assert (rows[endless]["status"], rows[endless]["reason"]) == ("quarantined", limit)
    fifo = rows[str(folder / "f_stuck.mp4")]
    assert (fifo["status"], fifo["reason"]) == ("failed", "not a regular file: a FIFO")
    assert verify_run(Storage(str(tmp_path / "run"))).ok
    assert seconds < 120, f"the run took {seconds:.0f} s"
