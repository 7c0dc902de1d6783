"""Config files: pydantic validation with errors naming the key and the file line, overrides, presets, schema."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, apply_overrides, config_to_yaml, load_config, preset_names
from pipeline.graph import build_graph
from stages.registry import STAGES
from tests.conftest import cli_invoke, ffp_cli

GOOD = """\
name: test
run_dir: {run_dir}
shard_size: 4
inputs:
  - kind: videos
    path: /data/videos
tracks:
  main: [ingest, augment]
stages:
  ingest:
    type: ingest
    params:
      num_frames: 17
      fps: 8
    resources:
      cpus: 2
  augment:
    type: synth_augment
    params: {{seed: 3}}
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).format(run_dir=tmp_path / "run"))
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based number of the (first) line containing ``needle``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def error_lines(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).splitlines()


def test_a_good_config_loads(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.tracks == {"main": ["ingest", "augment"]}
    assert config.stages["ingest"].resources.cpus == 2
    params = config.stage_params("ingest")
    assert (params.num_frames, params.fps, params.width) == (17, 8, 1280)  # defaults filled in
    assert config.stage_params("augment").seed == 3
    assert config.max_attempts == 3 and config.inputs[0].kind == "videos"


def test_stage_params_are_validated_once_when_loaded_and_again_for_a_copy_with_new_params(tmp_path, monkeypatch):
    from stages.ingest import Ingest

    config = load_config(write(tmp_path, GOOD))
    calls = []
    validate = Ingest.Params.model_validate
    monkeypatch.setattr(Ingest.Params, "model_validate", lambda data, **kw: calls.append(data) or validate(data, **kw))
    graph = build_graph(config)
    assert graph.nodes["ingest"].params is config.stage_params("ingest") and calls == []  # the loaded ones, kept
    spec = config.stages["ingest"].model_copy(update={"params": {"num_frames": 33}})
    changed = config.model_copy(update={"stages": {**config.stages, "ingest": spec}})
    assert changed.stage_params("ingest").num_frames == 33 and calls == [{"num_frames": 33}]
    assert config.stage_params("ingest").num_frames == 17


@pytest.mark.parametrize(
    "old, new, key, message, needle",
    [
        ("shard_size: 4", "shard_size: 4\nbogus: 1", "bogus", "unknown key", "bogus:"),
        ("shard_size: 4", "shard_size: four", "shard_size", "valid integer", "shard_size:"),
        ("shard_size: 4", "shard_size: 0", "shard_size", "greater than or equal to 1", "shard_size:"),
        ("      fps: 8", "      fps: 8\n      crff: 3", "stages.ingest.params.crff", "unknown key", "crff:"),
        ("      num_frames: 17", "      num_frames: lots", "stages.ingest.params.num_frames", "valid integer",
         "num_frames:"),
        ("      fps: 8", "      fps: -8", "stages.ingest.params.fps", "greater than 0", "fps:"),
        ("{seed: 3}", "{seed: 3, sede: 4}", "stages.augment.params.sede", "unknown key", "sede:"),
        ("      cpus: 2", "      cpus: 2\n      gpu: 1", "stages.ingest.resources.gpu", "unknown key", "gpu:"),
        ("      cpus: 2", "      cpus: plenty", "stages.ingest.resources.cpus", "valid number", "cpus:"),
        ("      cpus: 2", "      cpus: -1", "stages.ingest.resources.cpus", "greater than or equal to 0", "cpus:"),
        ("    path: /data/videos", "    path: /data/videos\n    colum: x", "inputs.0.colum", "unknown key", "colum:"),
        ("  - kind: videos", "  - kind: webcam", "inputs.0.kind", "'videos', 'list', 'vos', 'images' or 'image_pairs'", "kind:"),
        ("    type: ingest", "    type: ingest\n    typo: 1", "stages.ingest.typo", "unknown key", "typo:"),
        ("shard_size: 4", "shard_size: 4\nray:\n  num_cpu: 2", "ray.num_cpu", "unknown key", "num_cpu:"),
        ("    type: ingest", "    type: ingest\n    timeouts:\n      sample_sec: 5", "stages.ingest.timeouts.sample_sec",
         "unknown key", "sample_sec:"),
        ("    type: ingest", "    type: ingest\n    timeouts:\n      shard_s: 0", "stages.ingest.timeouts.shard_s",
         "greater than 0", "shard_s:"),
    ],
    ids=["top-unknown", "top-type", "top-range", "param-unknown", "param-type", "param-range", "flow-param-unknown",
         "resources-unknown", "resources-type", "resources-range", "input-unknown", "input-literal", "stage-unknown", "ray-unknown",
         "timeouts-unknown", "timeouts-range"],
)
def test_errors_name_the_key_and_the_file_line(tmp_path, old, new, key, message, needle):
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    path = write(tmp_path, text)
    lines = error_lines(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:{line_of(path, needle)}: {key}: "), lines[0]
    assert message in lines[0]


def test_all_problems_are_reported_at_once(tmp_path):
    path = write(tmp_path, GOOD.replace("      fps: 8", "      fps: 8\n      crff: 3\n      presett: fast"))
    lines = error_lines(path)
    assert [line.split(": ", 2)[1] for line in lines] == ["stages.ingest.params.crff", "stages.ingest.params.presett"]
    assert lines[0].startswith(f"{path}:{line_of(path, 'crff')}:")
    assert lines[1].startswith(f"{path}:{line_of(path, 'presett')}:")


def test_an_unknown_stage_type_names_the_known_ones(tmp_path):
    path = write(tmp_path, GOOD.replace("type: synth_augment", "type: synth_agument"))
    (line,) = error_lines(path)
    assert line.startswith(f"{path}:{line_of(path, 'synth_agument')}: stages.augment.type: unknown stage type 'synth_agument'")
    for known in STAGES:
        assert known in line


def test_tracks_must_name_known_stages_and_stages_must_be_used(tmp_path):
    lines = error_lines(write(tmp_path, GOOD.replace("[ingest, augment]", "[ingest, augmnt]")))
    assert "augmnt" in lines[0] and "not under 'stages'" in lines[0]
    lines = error_lines(write(tmp_path, GOOD.replace("[ingest, augment]", "[ingest]")))
    assert "augment" in lines[0] and "in no track" in lines[0]


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "stages: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))


# Overrides ---------------------------------------------------------------------------------------------------


def test_set_overrides_values_and_list_items(tmp_path):
    path = write(tmp_path, GOOD)
    config = load_config(path, overrides=[
        "inputs.0.path=/elsewhere/*.mp4",
        "stages.ingest.params.num_frames=33",
        "stages.ingest.params.width=null",
        "stages.ingest.params.height=null",
        "stages.augment.resources.actors=4",
        "shard_size=8",
        "tracks.main.1=augment",
    ], run_dir=str(tmp_path / "other"))
    assert config.inputs[0].path == "/elsewhere/*.mp4"
    assert config.stage_params("ingest").num_frames == 33  # parsed as YAML: an int
    assert config.stage_params("ingest").width is None
    assert config.stages["augment"].resources.actors == 4
    assert config.shard_size == 8
    assert config.run_dir == str(tmp_path / "other")


def test_set_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"stages\.ingest\.params\.crff: unknown key"):
        load_config(path, overrides=["stages.ingest.params.crff=20"])
    with pytest.raises(ConfigError, match=r"shard_size: .*integer"):
        load_config(path, overrides=["shard_size=big"])
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(path, overrides=["shard_size"])
    with pytest.raises(ConfigError, match="inputs.3.path"):
        load_config(path, overrides=["inputs.3.path=/x"])  # no fourth input


def test_apply_overrides_does_not_touch_its_input():
    data = {"inputs": [{"path": "a"}], "stages": {}}
    out = apply_overrides(data, ["inputs.0.path=b", "stages.x.type=ingest"])
    assert data == {"inputs": [{"path": "a"}], "stages": {}}
    assert out == {"inputs": [{"path": "b"}], "stages": {"x": {"type": "ingest"}}}


# Presets, schema, run.yaml -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo", "ingest-videos", "synth-vos"])
def test_presets_ship_with_the_package_and_load(name, tmp_path):
    assert name in preset_names()
    config = load_config(preset=name, run_dir=str(tmp_path / "run"))
    assert config.run_dir == str(tmp_path / "run")
    assert "ingest" in config.stages
    resolved = yaml.safe_load(config_to_yaml(config))
    assert resolved["stages"]["ingest"]["params"]["num_frames"] == config.stage_params("ingest").num_frames
    assert "crf" in resolved["stages"]["ingest"]["params"]  # defaults written out


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        load_config(preset="nope")
    assert "nope" in str(info.value) and "demo" in str(info.value) and "synth-vos" in str(info.value)


def test_preset_errors_name_the_preset_line_and_set_errors_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"^preset:demo:\d+: stages\.ingest\.params\.num_frames: unknown key"):
        load_config(preset="demo", overrides=["stages.ingest.type=ingest_images"])  # the preset's params: not its
    with pytest.raises(ConfigError, match=r"^--set stages\.ingest\.params\.crff=1: stages\.ingest\.params\.crff: "
                       r"unknown key; did you mean 'crf'\?$"):
        load_config(preset="demo", overrides=["stages.ingest.params.crff=1"])


def test_config_schema_prints_json_with_stage_params():
    code, out, err = cli_invoke(["config", "schema"])
    assert code == 0, err
    schema = json.loads(out)
    assert {"run_dir", "stages", "tracks", "inputs", "shard_size"} <= set(schema["properties"])
    assert set(schema["$stageParams"]) == set(STAGES)
    ingest = schema["$stageParams"]["ingest"]["properties"]
    assert {"num_frames", "fps", "width", "height", "crf"} <= set(ingest)
    assert ingest["num_frames"]["description"]
    assert "seed" in schema["$stageParams"]["synth_augment"]["properties"]


def test_config_show_and_plan_with_a_preset(tmp_path, demo_vos):
    from media.demo_media import make_demo_images

    code, out, err = cli_invoke(["config", "show", "--preset", "demo", "--set", f"inputs.0.path={demo_vos}",
                                 "--out", str(tmp_path / "run")])
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert shown["inputs"][0]["path"] == str(demo_vos) and shown["run_dir"] == str(tmp_path / "run")
    images = make_demo_images(tmp_path / "images", num_content=5)
    code, out, err = cli_invoke(["plan", "--preset", "demo", "--set", f"inputs.0.path={demo_vos}", "--set",
                                 f"inputs.1.path={images / 'content'}", "--set", f"inputs.2.path={images / 'styles'}",
                                 "--out", str(tmp_path / "run"), "--json"])
    assert code == 0, err
    plan = {row["stage"]: row for row in json.loads(out)}
    assert list(plan) == ["ingest", "augment", "judge", "export", "ingest_local", "plan", "ground", "track", "inpaint",
                          "rubric_local", "judge_local", "export_local", "ingest_images", "caption_content", "animate",
                          "caption_style", "depth", "stylize", "rubric_style", "judge_style", "export_style"]
    assert plan["ingest"]["shards"] == 2 and plan["ingest"]["todo"] == 2  # 6 sequences, 4 per shard
    assert plan["augment"]["waiting"] == 2 and plan["inpaint"]["waiting"] == 2
    assert plan["ingest_images"]["shards"] == 2 and plan["stylize"]["waiting"] == 2  # 5 pairs, 4 per shard
    assert not (tmp_path / "run").exists()  # plan writes nothing


def test_cli_config_errors_exit_2_with_file_and_line(tmp_path):
    path = write(tmp_path, GOOD.replace("      fps: 8", "      fps: 8\n      crff: 3"))
    result = ffp_cli("plan", str(path))
    assert result.returncode == 2
    assert f"{path}:{line_of(path, 'crff')}: stages.ingest.params.crff: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    result = ffp_cli("plan", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "no such config file or run folder" in result.stderr


def test_a_run_folder_refuses_a_config_that_moves_its_shards(tmp_path):
    """run.yaml fixes inputs, shard_size, tracks and stage types; a changed one needs a new run folder."""
    empty = tmp_path / "no-videos"
    empty.mkdir()
    path = write(tmp_path, GOOD.replace("/data/videos", str(empty)))
    code, out, err = cli_invoke(["run", str(path)])  # nothing to do: no Ray needed
    assert code == 0, out + err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # Ray starts only for work
    run_yaml = yaml.safe_load((tmp_path / "run/run.yaml").read_text())
    assert run_yaml["stages"]["ingest"]["params"]["crf"] == 18  # resolved, defaults filled in
    code, out, err = cli_invoke(["run", str(path), "--set", "shard_size=8"])
    assert code == 2
    assert "shard_size" in err and "new run folder" in " ".join(err.split())
    code, out, err = cli_invoke(["run", str(tmp_path / "run"), "--set", "shard_size=8"])  # on the run folder itself
    assert code == 2 and "shard_size" in err and "cannot change in it" in " ".join(err.split())
