"""simpool-embed: Parquet output, resume, failures, --local parity, interruption; real servers on loopback."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from simpool_serve.client import SimPoolClient
from simpool_serve.client.embed_cli import main
from tests.helpers import BIN, Server, cosine, free_port, start_server
from tests.helpers.loopback_proxy import ProxyScript, loopback_proxy

BROKEN = {"broken.jpg", "deep/truncated.jpg"}
KEY = "embed-key"
STRICT = {"SIMPOOL_MAX_IMAGES_PER_REQUEST": "2", "SIMPOOL_MAX_IMAGE_BYTES": "160000"}  # logo.png is larger


@pytest.fixture(scope="module")
def strict_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two images per request, 160 kB per image, and an API key."""
    env = {"SIMPOOL_DEFAULT_MODEL": "resnet18", "SIMPOOL_API_KEY": KEY, **STRICT}
    with start_server(model_repo, tmp_path_factory.mktemp("strict-logs"), env) as s:
        yield s


def make_source(photos: dict[str, Path], root: Path, broken: bool = True) -> Path:
    """The fixture photos, some in sub-folders, plus (optionally) two files no decoder accepts."""
    root.mkdir()
    (root / "deep" / "er").mkdir(parents=True)
    for i, (name, path) in enumerate(sorted(photos.items())):
        dest = root / ("deep/er" if i % 3 == 0 else "deep" if i % 3 == 1 else ".") / name
        shutil.copy(path, dest)
    (root / "notes.txt").write_text("not an image, not even looked at")
    if broken:
        (root / "broken.jpg").write_bytes(os.urandom(2048))
        (root / "deep" / "truncated.jpg").write_bytes(photos["astronaut.jpg"].read_bytes()[:600])
    return root


def summary(text: str) -> tuple[int, int, int]:
    """(embedded, unchanged, failed) from the run's summary line."""
    m = re.search(r"(\d+) embedded, (\d+) unchanged, (\d+) failed", text)
    assert m, text
    return int(m[1]), int(m[2]), int(m[3])


def rows(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in pq.read_table(out).to_pylist()}


def test_writes_resumes_and_records_failures(
    server: Server, photos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = make_source(photos, tmp_path / "src"), tmp_path / "out" / "emb.parquet"
    base = [str(src), "--out", str(out), "--url", server.url, "--no-progress"]
    with SimPoolClient(server.url) as client:
        fp = {m.name: m.fingerprint for m in client.models()}

    assert main([*base, "--batch", "3", "--concurrency", "2"]) == 1
    first = capsys.readouterr().out
    assert summary(first) == (len(photos), 0, 2)
    assert all(name in first for name in BROKEN)  # listed at the end
    table = rows(out)
    assert set(table) == {p.relative_to(src).as_posix() for p in src.rglob("*.*") if p.suffix != ".txt"}
    for path, row in table.items():
        assert row["sha256"] == hashlib.sha256((src / path).read_bytes()).hexdigest()
        assert row["model"] == "resnet18" and row["fingerprint"] == fp["resnet18"]
        if path in BROKEN:
            assert row["error"] and row["embedding"] is None
        else:
            assert row["error"] is None
            assert np.linalg.norm(np.asarray(row["embedding"])) == pytest.approx(1.0, abs=1e-5)
    assert pq.read_schema(out).field("embedding").type.value_type == "float"

    assert main(base) == 1  # nothing changed: nothing embedded, the broken files are tried again
    assert summary(capsys.readouterr().out) == (0, len(photos), 2)

    changed = next(p for p in table if p.endswith("astronaut.jpg"))
    Image.open(src / changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src / changed)
    for name in BROKEN:
        (src / name).unlink()
    assert main(base) == 0
    assert summary(capsys.readouterr().out) == (1, len(photos) - 1, 0)
    after = rows(out)
    assert set(after) == set(table) - BROKEN
    assert after[changed]["sha256"] != table[changed]["sha256"]
    assert cosine(after[changed]["embedding"], table[changed]["embedding"]) < 0.99999

    assert main([*base, "--model", "vit_tiny"]) == 0  # another fingerprint: everything again
    assert summary(capsys.readouterr().out) == (len(photos), 0, 0)
    vit = rows(out)
    assert {r["fingerprint"] for r in vit.values()} == {fp["vit_tiny"]}
    assert {len(r["embedding"]) for r in vit.values()} == {192}


def test_local_matches_server(
    server: Server, model_repo: Path, photos: dict[str, Path], tmp_path: Path
) -> None:
    src = make_source(photos, tmp_path / "src")
    via_url, via_local = tmp_path / "url.parquet", tmp_path / "local.parquet"
    assert main([str(src), "--out", str(via_url), "--url", server.url, "--no-progress"]) == 1
    # The installed console script, in-process runtime, no server.
    proc = subprocess.run(
        [BIN / "simpool-embed", src, "--out", via_local, "--local", model_repo, "--model", "resnet18"],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")},
    )
    assert proc.returncode == 1, proc.stderr
    assert "img/s" in proc.stderr  # the progress bar
    a, b = rows(via_url), rows(via_local)
    assert set(a) == set(b)
    for path in a:
        assert a[path]["fingerprint"] == b[path]["fingerprint"]
        assert a[path]["sha256"] == b[path]["sha256"]
        if path in BROKEN:
            assert a[path]["error"] and b[path]["error"]
        else:
            assert cosine(a[path]["embedding"], b[path]["embedding"]) >= 0.9999, path


def with_default_signals(cmd: list) -> list:
    """`cmd` with SIGINT and SIGTERM back to their defaults: a shell ignores SIGINT in its background
    jobs, and a child inherits that, so the suite run with `&` would send a Ctrl-C that nobody hears."""
    reset = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "signal.signal(signal.SIGTERM, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", reset, *map(str, cmd)]


def test_unreachable_service_fails_at_once_naming_the_url(tmp_path: Path, photos: dict[str, Path]) -> None:
    src, out = make_source(photos, tmp_path / "src", broken=False), tmp_path / "o.parquet"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused, which waiting would not change
    started = time.monotonic()
    proc = subprocess.run(
        [BIN / "simpool-embed", src, "--out", out, "--url", url], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and not out.exists()
    assert time.monotonic() - started < 30  # not the retry budget (120 s by default)
    assert proc.stderr.strip().splitlines() == [
        f"simpool-embed: error: cannot connect to {url} (connection refused): "
        "is simpool-serve running there? "
        "Start it (simpool-serve --model-dir DIR), or give the URL it listens on"
    ]


@pytest.mark.parametrize(
    ("sig", "code", "said"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_interrupted_run_keeps_a_valid_file_and_resumes(
    server: Server,
    photos: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sig: signal.Signals,
    code: int,
    said: str,
) -> None:
    src, out = make_source(photos, tmp_path / "src", broken=False), tmp_path / "o.parquet"
    # The proxy answers two single-image requests, then holds the third until the test ends.
    script = ProxyScript(upstream=server.url, hold_after=2)
    with loopback_proxy(script) as url:
        cmd = [BIN / "simpool-embed", src, "--out", out, "--url", url, "--batch", "1", "--concurrency", "1"]
        proc = subprocess.Popen(
            with_default_signals([*cmd, "--checkpoint-every", "0"]), stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 120
            while not (out.exists() and pq.read_table(out).num_rows == 2):  # every read sees a whole file
                assert proc.poll() is None and time.monotonic() < deadline, "run ended early"
                time.sleep(0.1)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == code, err
    assert f"{said}" in err and "2 new rows saved" in err
    assert pq.read_table(out).num_rows == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert main([str(src), "--out", str(out), "--url", server.url, "--no-progress"]) == 0
    assert summary(capsys.readouterr().out) == (len(photos) - 2, 2, 0)


def test_one_failure_reads_as_one_and_the_file_follows_the_umask(
    server: Server, photos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "src", tmp_path / "o.parquet"
    src.mkdir()
    shutil.copy(photos["coffee.jpg"], src)
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    previous = os.umask(0o027)
    try:
        assert main([str(src), "--out", str(out), "--url", server.url, "--no-progress"]) == 1
    finally:
        os.umask(previous)
    text = capsys.readouterr().out
    assert "simpool-embed: 2 images: 1 embedded, 0 unchanged, 1 failed" in text
    assert "simpool-embed: 1 image failed:" in text
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # not mkstemp's 0600
    out.chmod(0o664)  # a re-run keeps the file's own permissions
    assert main([str(src), "--out", str(out), "--url", server.url, "--no-progress"]) == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o664


def test_strict_server_key_limits_and_local_limits(
    strict_server: Server,
    model_repo: Path,
    photos: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = make_source(photos, tmp_path / "src", broken=False)
    out = tmp_path / "o.parquet"
    base = [str(src), "--out", str(out), "--no-progress"]
    monkeypatch.delenv("SIMPOOL_API_KEY", raising=False)
    assert main([*base, "--url", strict_server.url]) == 2  # no key: stops before embedding anything
    assert "401" in capsys.readouterr().err and not out.exists()

    # Batches of 5 are more than the server takes (2): refused requests are halved until they fit.
    assert main([*base, "--url", strict_server.url, "--api-key", KEY, "--batch", "5"]) == 1
    assert summary(capsys.readouterr().out) == (len(photos) - 1, 0, 1)
    logo = next(r for p, r in rows(out).items() if p.endswith("logo.png"))
    assert "160000" in logo["error"] and logo["embedding"] is None

    # In-process, the same SIMPOOL_* limits apply.
    for k, v in STRICT.items():
        monkeypatch.setenv(k, v)
    local = tmp_path / "local.parquet"
    argv = [str(src), "--out", str(local), "--local", str(model_repo / "resnet18"), "--no-progress"]
    assert main(argv) == 1
    assert summary(capsys.readouterr().out) == (len(photos) - 1, 0, 1)
    assert rows(local).keys() == rows(out).keys()


def test_local_refuses_a_graph_its_manifest_does_not_name(
    model_repo: Path, photos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--local writes the manifest's fingerprint into every row: a swapped model.onnx must stop it."""
    swapped = tmp_path / "repo" / "resnet18"
    swapped.mkdir(parents=True)
    shutil.copy(model_repo / "resnet18" / "manifest.json", swapped / "manifest.json")
    shutil.copy(model_repo / "vit_tiny" / "model.onnx", swapped / "model.onnx")
    src = make_source(photos, tmp_path / "src", broken=False)
    out = tmp_path / "o.parquet"
    assert main([str(src), "--out", str(out), "--local", str(swapped), "--no-progress"]) == 2
    assert "is not the graph manifest.json describes" in capsys.readouterr().err and not out.exists()


def test_an_endpoint_given_as_url_gets_the_base_url_to_use(
    server: Server, photos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = make_source(photos, tmp_path / "src", broken=False), tmp_path / "o.parquet"
    assert main([str(src), "--out", str(out), "--url", f"{server.url}/embed", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot list the models of {server.url}/embed" in err and "404" in err
    assert f"--url takes the service's base URL (such as {server.url}), not an endpoint" in err
    assert not out.exists()


def test_without_the_embed_extra_it_says_which_to_install(tmp_path: Path) -> None:
    """pyarrow and tqdm come with the `embed` extra: without them, one line says so (no traceback)."""
    # A None entry in sys.modules is how Python marks a module as not importable.
    code = (
        "import sys; sys.modules.update(pyarrow=None, tqdm=None)\n"
        "from simpool_serve.client.embed_cli import main\n"
        f"sys.exit(main([{str(tmp_path)!r}, '--out', {str(tmp_path / 'o.parquet')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "simpool-embed: error: pyarrow and tqdm missing: simpool-embed needs the `embed` extra: "
        "pip install 'simpool-serve[embed]' (in a clone: make install)"
    )
