"""Security defaults (issue 6): no code path that unpickles or runs remote code, no credential written into a
run folder or printed. (Tar members that escape or are links/devices: ``test_manifests.py``; the review server
and the Ray dashboard on loopback: ``test_review.py``, ``test_ray_connect.py``.)"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from manifests.storage import credential_in_url, without_credentials
from media.sources import InputListError, list_table
from pipeline.config import ConfigError, config_to_yaml, validate_config
from tests.conftest import synth_config

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "manifests", "stages")


def _calls(path: Path) -> list[tuple[int, str, ast.Call]]:
    """(line, dotted name, call) of every call in a module, e.g. ``(12, "torch.load", ...)``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            parts, func = [], node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            parts.append(func.id if isinstance(func, ast.Name) else "<expr>")  # f(x).eval() is no eval()
            found.append((node.lineno, ".".join(reversed(parts)), node))
    return found


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def _unsafe_calls(path: Path) -> list[str]:
    problems = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(n.split(".")[0] in ("pickle", "cloudpickle", "dill", "marshal", "shelve") for n in names):
                problems.append(f"line {node.lineno}: imports a pickle-like module")
    for line, name, call in _calls(path):
        last = name.rsplit(".", 1)[-1]
        if name == "torch.load" and _keyword(call, "weights_only") is not True:
            problems.append(f"line {line}: torch.load without weights_only=True")
        if last == "load" and name.startswith(("np.", "numpy.")) and _keyword(call, "allow_pickle") is True:
            problems.append(f"line {line}: np.load(allow_pickle=True)")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
            problems.append(f"line {line}: {name} (only yaml.safe_load)")
        if name in ("eval", "exec"):
            problems.append(f"line {line}: {name}()")
        if _keyword(call, "trust_remote_code") is True:
            problems.append(f"line {line}: trust_remote_code=True hard-coded (a model's params must ask for it)")
    return problems


def test_no_code_path_unpickles_or_runs_remote_code() -> None:
    modules = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    assert len(modules) > 40
    problems = [f"{p.relative_to(REPO)} {problem}" for p in modules for problem in _unsafe_calls(p)]
    assert not problems, "\n".join(problems)


def test_the_scan_catches_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport torch, numpy as np, yaml\n"
        "torch.load('x')\nnp.load('x', allow_pickle=True)\nyaml.load('x')\neval('1')\n"
        "AutoModel.from_pretrained('x', trust_remote_code=True)\n"
        "torch.load('y', weights_only=True)\nnp.load('y')\nyaml.safe_load('y')\n"
    )
    assert [p.split(":")[0] for p in _unsafe_calls(bad)] == [f"line {n}" for n in (1, 3, 4, 5, 6, 7)]


# Credentials in URLs: refused before anything is written ---------------------------------------------------

SECRET = "wJalrXUtnFEMI-K7MDENG"
SECRET_URLS = [
    f"https://user:{SECRET}@example.com/videos/a.mp4",
    f"https://bucket.s3.amazonaws.com/a.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={SECRET}",
    f"https://account.blob.core.windows.net/c/a.mp4?sv=2022-11-02&sig={SECRET}",
    f"https://storage.googleapis.com/b/a.mp4?X-Goog-Signature={SECRET}",
    f"https://example.com/a.mp4?token={SECRET}",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_a_url_with_a_credential_is_recognised_and_printed_without_it(url: str) -> None:
    assert credential_in_url(url)
    assert SECRET not in without_credentials(url) and "***" in without_credentials(url)


@pytest.mark.parametrize("url", ["s3://bucket/videos/a.mp4", "https://example.com/a.mp4?start=3", "/data/a.mp4",
                                 "https://user@example.com/a.mp4", "gs://b/a%20b.mp4"])
def test_plain_urls_are_not_flagged(url: str) -> None:
    assert credential_in_url(url) is None


@pytest.mark.parametrize("url", SECRET_URLS[:2])
def test_a_config_input_or_run_dir_with_a_credential_is_an_error_naming_the_key(url: str, tmp_path: Path) -> None:
    data = synth_config(tmp_path / "run", tmp_path / "vos").model_dump(mode="json")
    with pytest.raises(ConfigError) as bad_input:
        validate_config({**data, "inputs": [{"kind": "list", "path": url}]})
    assert "inputs.0.path: the URL carries" in str(bad_input.value) and SECRET not in str(bad_input.value)
    with pytest.raises(ConfigError) as bad_run_dir:
        validate_config({**data, "run_dir": url})
    assert "run_dir: the URL carries" in str(bad_run_dir.value) and SECRET not in str(bad_run_dir.value)


def test_a_list_row_with_a_credential_stops_the_listing_without_printing_it(tmp_path: Path) -> None:
    table = tmp_path / "videos.csv"
    table.write_text("path\nclips/a.mp4\n" + SECRET_URLS[1] + "\n")
    with pytest.raises(InputListError) as info:
        list_table(str(table), "path")
    message = str(info.value)
    assert "carries the query parameter 'X-Amz-Signature'" in message and "X-Amz-Signature=***" in message
    assert SECRET not in message


# Tokens in the environment: used by libraries, never written or printed by ffp -----------------------------


@pytest.mark.slow
def test_tokens_in_the_environment_never_reach_the_run_folder_or_the_output(demo_vos: Path, tmp_path: Path) -> None:
    tokens = {"HF_TOKEN": "hf_" + SECRET, "AWS_SECRET_ACCESS_KEY": SECRET + "aws", "AWS_ACCESS_KEY_ID": "AKIA" + SECRET[:12],
              "GOOGLE_APPLICATION_CREDENTIALS": f"/secrets/gcp-{SECRET}.json"}
    run_dir = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(config_to_yaml(synth_config(run_dir, demo_vos)))
    ray_tmp = Path(os.environ.get("FFP_TEST_RAY_TMP", "/tmp")) / f"ffps-{os.getpid()}"
    env = {**os.environ, **tokens, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    leaks = [name for name, value in tokens.items() if value in done.stdout + done.stderr]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        leaks += [f"{name} in {path.relative_to(run_dir)}" for name, value in tokens.items() if value.encode() in data]
    assert not leaks, leaks
