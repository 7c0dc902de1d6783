"""Config errors a data engineer can fix in one go: every problem of a config in one error, each on its own line with
where it is (the file line, or the ``--set`` flag the value came from) and the valid name closest to a misspelt one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    ConfigError,
    ConfigProblem,
    config_to_yaml,
    load_config,
    override_config,
    preset_text,
)
from tests.conftest import cli_invoke
from tests.test_config import GOOD, line_of, write


def problems_of(*args: object, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)  # type: ignore[arg-type]
    assert str(info.value).splitlines() == [str(problem) for problem in info.value.problems]
    return str(info.value).splitlines()


def test_three_mistakes_at_three_levels_are_one_error_with_their_lines_and_suggestions(tmp_path):
    text = (GOOD.replace("shard_size: 4", "shard_sise: 4")
            .replace("num_frames: 17", "num_frame: 17")
            .replace("fps: 8", "fps: eight"))
    path = write(tmp_path, text)
    assert problems_of(path) == [
        f"{path}:{line_of(path, 'shard_sise')}: shard_sise: unknown key; did you mean 'shard_size'?",
        (f"{path}:{line_of(path, 'num_frame:')}: stages.ingest.params.num_frame: unknown key; did you mean "
         "'num_frames'?"),
        (f"{path}:{line_of(path, 'fps:')}: stages.ingest.params.fps: Input should be a valid number, unable to parse "
         "string as a number"),
    ]


def test_every_stage_is_checked_even_when_the_rest_is_wrong(tmp_path):
    """A top-level mistake does not hide the stages' ones: each stage's type and params are checked regardless."""
    path = write(tmp_path, GOOD.replace("shard_size: 4", "shard_size: -4").replace("{seed: 3}", "{sede: 3}")
                 .replace("type: ingest", "type: ingset"))
    lines = problems_of(path)
    assert [line.split(": ")[1] for line in lines] == ["shard_size", "stages.ingest.type", "stages.augment.params.sede"]
    assert lines[1].endswith("did you mean 'ingest'?")
    assert lines[2].endswith("did you mean 'seed'?")


def test_a_set_typo_is_blamed_on_the_flag_and_suggests_the_key(tmp_path):
    path = write(tmp_path, GOOD)
    assert problems_of(path, overrides=["stages.ingest.params.num_frame=33", "shard_size=8"]) == [
        ("--set stages.ingest.params.num_frame=33: stages.ingest.params.num_frame: unknown key; did you mean "
         "'num_frames'?")
    ]
    # a value a flag set over the file's is the flag's fault, not the line it replaced
    assert problems_of(path, overrides=["stages.ingest.params.fps=fast"]) == [
        ("--set stages.ingest.params.fps=fast: stages.ingest.params.fps: Input should be a valid number, unable to "
         "parse string as a number")
    ]


def test_a_set_into_a_misspelt_stage_names_the_stage(tmp_path):
    path = write(tmp_path, GOOD)
    assert problems_of(path, overrides=["stages.ingset.params.fps=12"]) == [
        "--set stages.ingset.params.fps=12: stages.ingset: no stage 'ingset' in the config; did you mean 'ingest'?"
    ]


@pytest.mark.parametrize("flag, message", [
    ("shard_size", "--set shard_size: expected KEY.PATH=VALUE, e.g. --set stages.ingest.params.crf=20"),
    ("tracks.main=[ingest,", ("--set tracks.main=[ingest,: the value is not valid YAML (expected the node content, "
                              "but found '<stream end>'); quote it to give a string, e.g. --set "
                              "'tracks.main=\"[ingest,\"'")),
    ("inputs.1.path=/x", ("--set inputs.1.path=/x: inputs.1.path: inputs has items 0 to 0, no item 1; to add one, "
                          "set the whole list: --set 'inputs=[...]'")),
    ("inputs.path=/x", "--set inputs.path=/x: inputs.path: inputs is a list; give an item's index, e.g. inputs.0"),
    ("shard_size.max=8", ("--set shard_size.max=8: shard_size.max: shard_size is 4, not a mapping or a list; set "
                          "it whole: --set shard_size=VALUE")),
    ("stages..type=ingest", ("--set stages..type=ingest: an empty key in the path; write KEY.PATH with one dot "
                             "between keys")),
], ids=["no-equals", "bad-yaml", "past-the-list", "list-without-index", "through-a-value", "empty-part"])
def test_a_set_that_cannot_be_read_or_set_says_why_and_what_to_write(tmp_path, flag, message):
    path = write(tmp_path, GOOD)
    assert problems_of(path, overrides=[flag, "shard_sise=8"]) == [
        message, "--set shard_sise=8: shard_sise: unknown key; did you mean 'shard_size'?"]


def test_a_preset_typo_suggests_the_preset():
    (line,) = problems_of(preset="dmeo")
    assert line.startswith("--preset dmeo: no preset 'dmeo' (presets: ") and line.endswith("did you mean 'demo'?")
    with pytest.raises(ConfigError) as info:
        preset_text("synth-voss")
    assert info.value.problems[0].suggestions == ("synth-vos",)


def test_an_unknown_stage_type_suggests_close_types(tmp_path):
    path = write(tmp_path, GOOD.replace("type: synth_augment", "type: synth_agument"))
    (problem,) = _problems(path)
    assert problem.location == f"{path}:{line_of(path, 'synth_agument')}"
    assert (problem.key, problem.suggestions) == ("stages.augment.type", ("synth_augment",))
    assert problem.message.startswith("unknown stage type 'synth_agument' (known: animate, ")


def test_a_track_naming_a_misspelt_stage_suggests_it(tmp_path):
    path = write(tmp_path, GOOD.replace("[ingest, augment]", "[ingest, agument]"))
    assert problems_of(path)[0] == (f"{path}:{line_of(path, 'agument')}: tracks.main.1: stage 'agument' is not under "
                                    "'stages'; did you mean 'augment'?")


def test_a_gpu_plan_entry_is_blamed_on_its_line(tmp_path):
    path = write(tmp_path, GOOD + "gpu_plans:\n  h100:\n    stages.augment.resources.gpus: 1.5\n")
    assert load_config(path).stages["augment"].resources.gpus == 0  # no gpu: no plan applied
    assert problems_of(path, overrides=["gpu=h100"]) == [
        (f"{path}:{line_of(path, 'gpus: 1.5')}: stages.augment.resources.gpus: 1.5 GPUs: an actor gets a share of "
         "one GPU or whole GPUs; above 1 give a whole number")]
    assert problems_of(path, overrides=["gpu=h10"])[0].endswith("gpu: unknown GPU type 'h10'; known: a100, h100, h200; "
                                                                "did you mean 'h100'?")


def test_a_valid_config_loads_as_written(tmp_path):
    """The preset's text as a file gives the preset's config, each stage's params as written (defaults filled in);
    ``override_config`` without flags changes nothing."""
    path = tmp_path / "demo.yaml"
    path.write_text(preset_text("demo"))
    from_file = load_config(path, run_dir=str(tmp_path / "run"))
    from_preset = load_config(preset="demo", run_dir=str(tmp_path / "run"))
    assert config_to_yaml(from_file) == config_to_yaml(from_preset)
    written = yaml.safe_load(preset_text("demo"))["stages"]
    for name, spec in written.items():
        assert from_preset.stages[name].params == spec.get("params", {})
        resolved = from_preset.stage_params(name).model_dump(mode="json")
        scalars = {key: value for key, value in spec.get("params", {}).items() if not isinstance(value, dict)}
        assert {key: resolved[key] for key in scalars} == scalars, name
    assert config_to_yaml(override_config(from_preset, [])) == config_to_yaml(from_preset)


def test_override_config_sets_values_and_blames_the_flags(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    changed = override_config(config, ["stages.ingest.params.num_frames=33", "shard_size=8"])
    assert (changed.stage_params("ingest").num_frames, changed.shard_size) == (33, 8)
    assert (config.stage_params("ingest").num_frames, config.shard_size) == (17, 4)  # the given one unchanged
    with pytest.raises(ConfigError) as info:
        override_config(config, ["stages.ingest.params.num_frame=33", "shard_size=0"], source="RUN/run.yaml")
    assert str(info.value).splitlines() == [  # the flags' problems in the flags' order
        ("--set stages.ingest.params.num_frame=33: stages.ingest.params.num_frame: unknown key; did you mean "
         "'num_frames'?"),
        "--set shard_size=0: shard_size: Input should be greater than or equal to 1",
    ]
    with pytest.raises(ConfigError) as info:  # a problem a flag revealed in the config: on the config
        override_config(config, ["ray.num_cpus=1"], source="RUN/run.yaml")
    assert str(info.value) == ("RUN/run.yaml: stages.ingest.resources.cpus: one actor needs 2 CPUs, but ray.num_cpus "
                               "gives the local Ray 1")


def test_override_config_applies_a_gpu_plan_only_when_the_gpu_changes():
    """A run started with a flag over its GPU plan keeps it when another value is changed later."""
    started = load_config(preset="local-gpu-480p", overrides=["gpu=h200", "stages.inpaint.resources.actors=2"])
    assert started.stages["inpaint"].resources.actors == 2  # the flag wins over the plan's 5
    assert override_config(started, ["shard_size=8"]).stages["inpaint"].resources.actors == 2
    moved = override_config(load_config(preset="local-gpu-480p"), ["gpu=h200"])
    assert config_to_yaml(moved) == config_to_yaml(load_config(preset="local-gpu-480p", overrides=["gpu=h200"]))
    assert moved.stages["inpaint"].resources.actors == 5


def test_ffp_prints_every_problem_and_exits_2(tmp_path):
    path = write(tmp_path, GOOD.replace("shard_size: 4", "shard_sise: 4"))
    code, _, err = cli_invoke(["plan", str(path), "--set", "stages.ingest.params.fsp=8"])
    assert code == 2
    assert err.splitlines() == [
        f"error: {path}:{line_of(path, 'shard_sise')}: shard_sise: unknown key; did you mean 'shard_size'?",
        "--set stages.ingest.params.fsp=8: stages.ingest.params.fsp: unknown key; did you mean 'fps'?",
    ]


def _problems(path: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems
