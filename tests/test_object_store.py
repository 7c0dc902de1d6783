"""The same run on object storage: inputs and run folder on s3:// served by a real S3-compatible server (moto)
on loopback, through the real `ffp` command, Ray actors included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ffp_cli, synth_config


@pytest.mark.slow
def test_inputs_and_run_folder_on_s3(s3: str, demo_vos: Path, tmp_path: Path) -> None:
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(str(demo_vos), f"{s3}/inputs/vos", recursive=True)
    run_url = f"{s3}/runs/one"
    config = synth_config(run_url, f"{s3}/inputs/vos")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    first = ffp_cli("run", str(config_file))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    manifests = sorted(fs.find(f"{run_url}/manifests"))
    assert len(manifests) == 3 * 2  # 3 stages x 2 shards (6 sequences, 4 per shard)
    pairs = [p for p in fs.find(f"{run_url}/export") if p.endswith(".tar")]
    assert len(pairs) == 2 and fs.exists(f"{run_url}/export/dataset.parquet")

    verified = ffp_cli("verify", run_url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    counted = ffp_cli("query", run_url, "select count(*) as n from export where status = 'ok'", "--json")
    assert counted.returncode == 0 and '"n": 6' in counted.stdout, counted.stdout + counted.stderr

    def stamps() -> dict[str, tuple[str, object]]:
        fs.invalidate_cache()
        return {path: (fs.info(path)["ETag"], fs.info(path)["LastModified"]) for path in manifests + pairs}

    before = stamps()
    again = ffp_cli("run", run_url)  # resume from the run folder alone: nothing to do, nothing rewritten
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert stamps() == before


def test_a_listing_sees_what_another_process_committed_since(s3: str) -> None:
    """The driver lists manifests that actors (other processes) write: no listing may come from a cache."""
    from manifests.storage import Storage

    driver = Storage(f"{s3}/listing/run")
    driver.write_bytes("manifests/ingest/shard-000000.parquet", b"first")
    assert driver.list("manifests/*", pattern="shard-*.parquet") == ["manifests/ingest/shard-000000.parquet"]
    actor = subprocess.run(
        [sys.executable, "-c", "import sys; from manifests.storage import Storage; "
         "Storage(sys.argv[1]).write_bytes('manifests/export/shard-000000.parquet', b'second')", driver.url],
        capture_output=True, text=True, timeout=120,
    )
    assert actor.returncode == 0, actor.stderr
    assert driver.list("manifests/*", pattern="shard-*.parquet") == [
        "manifests/export/shard-000000.parquet", "manifests/ingest/shard-000000.parquet",
    ]
