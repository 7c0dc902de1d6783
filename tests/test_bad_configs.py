"""The bad configs of the bad-input corpus (``tests/data/bad/texts.py``): each fails at load time, before Ray or any
work starts, with one error line per problem naming the file line, the key path and (for resources) the numbers;
``ffp plan`` and ``ffp run`` print it and exit 2 without a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.graph import build_graph
from tests.conftest import cli_invoke, ffp_cli
from tests.data.bad import texts
from tests.data.bad.texts import CONFIGS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad_texts")
    written = texts.generate(folder)
    assert {p.name for p in written if p.parent.name == "configs"} == {f"{name}.yaml" for name in CONFIGS}
    return folder


def config_path(corpus: Path, name: str) -> Path:
    return corpus / "configs" / f"{name}.yaml"


def expected_lines(path: Path, name: str) -> list[tuple[str, str]]:
    """Per error line the config must give: its start ``FILE:LINE: KEY: `` (``FILE: `` without a key) and a text
    its message holds."""
    case = CONFIGS[name]
    line = ""
    if case.line_of is not None:
        line = ":" + str(next(i for i, text in enumerate(path.read_text().splitlines(), 1) if case.line_of in text))
    return [(f"{path}{line}: {key}: " if key else f"{path}{line}: ", message) for key, message in case.errors]


def has_lines(text: str, wanted: list[tuple[str, str]]) -> bool:
    """Each wanted (start, message) is one line of ``text`` (in order)."""
    lines = text.splitlines()
    return len(lines) == len(wanted) and all(
        line.startswith(start) and message in line for line, (start, message) in zip(lines, wanted, strict=True))


def test_the_base_config_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "base.yaml"
    path.write_text(texts.BASE_CONFIG)
    graph = build_graph(load_config(path))
    assert graph.order == ["ingest", "plan", "ground", "track", "inpaint", "judge"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_bad_config_is_an_error_naming_the_key(corpus: Path, name: str) -> None:
    path = config_path(corpus, name)
    assert path.read_text() != texts.BASE_CONFIG
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert has_lines(str(info.value), expected_lines(path, name)), str(info.value)
    assert all(len(line) < 300 for line in str(info.value).splitlines())


@pytest.mark.parametrize("name", CONFIGS)
def test_ffp_plan_prints_the_error_and_exits_2(corpus: Path, name: str, tmp_path: Path) -> None:
    path = config_path(corpus, name)
    code, out, err = cli_invoke(["plan", str(path), "--out", str(tmp_path / "run")])
    assert code == 2, out + err
    assert err.startswith("error: ") and has_lines(err.removeprefix("error: "), expected_lines(path, name)), err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["unknown_param", "more_gpus_than_ray", "tensor_parallel_over_ray"])
def test_ffp_run_stops_before_ray_and_writes_nothing(corpus: Path, name: str, tmp_path: Path) -> None:
    path = config_path(corpus, name)
    code, out, err = cli_invoke(["run", str(path), "--out", str(tmp_path / "run")])
    assert code == 2, out + err
    assert has_lines(err.removeprefix("error: "), expected_lines(path, name)), err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    assert not (tmp_path / "run").exists()


def test_ffp_run_as_a_user_runs_it(corpus: Path, tmp_path: Path) -> None:
    """The console script in a subprocess: exit code 2, every problem on stderr, no traceback."""
    path = config_path(corpus, "tensor_parallel_over_ray")
    result = ffp_cli("run", str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert has_lines(result.stderr.removeprefix("error: "), expected_lines(path, "tensor_parallel_over_ray"))
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_impossible_resources_from_a_set_override(tmp_path: Path) -> None:
    """``--set`` is checked like the file; the error is blamed on the flag that set the value."""
    path = tmp_path / "base.yaml"
    path.write_text(texts.BASE_CONFIG)
    code, _, err = cli_invoke(["plan", str(path), "--set", "stages.track.resources.gpus=3", "--set", "ray.num_gpus=2"])
    assert code == 2
    assert ("--set stages.track.resources.gpus=3: stages.track.resources.gpus: one actor needs 3 GPUs, but "
            "ray.num_gpus gives the local Ray 2") in " ".join(err.split())


def test_a_cluster_address_skips_the_local_resource_check(tmp_path: Path) -> None:
    """``ray.num_cpus``/``num_gpus`` describe only a local Ray; on a cluster its own size decides."""
    path = tmp_path / "cluster.yaml"
    path.write_text(CONFIGS["more_gpus_than_ray"].text().replace("ray:\n", "ray:\n  address: ray://head:10001\n"))
    assert load_config(path).stages["inpaint"].resources.gpus == 2
