"""The deployment's monitoring, for real: Debian's Prometheus binary, started with the repo's
deploy/prometheus/prometheus.yml (only the scrape targets and intervals rewritten for loopback), scrapes a
running simpool-serve; the request counters, the alert rules and every Grafana panel query are checked
through Prometheus's HTTP query API.

Skipped only where the `prometheus` binary is absent (.ci/run installs it with apt)."""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.test_deploy import (
    ALERTS_YML,
    PROMETHEUS_YML,
    concrete_promql,
    dashboard_exprs,
    load_yaml,
    metric_names,
)
from tests.helpers import Server, free_port, running_process, start_server

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian's `prometheus` binary is not installed (.ci/run installs it with apt)"
)
SCRAPE = "1s"  # the test's scrape and rule-evaluation interval (the repo's is 15s)


def loopback_config(simpool: str, prometheus: str, tmp: Path, text: str | None = None) -> Path:
    """The repo's Prometheus config with only what must change on loopback rewritten: the scrape
    targets (Docker DNS discovery -> the test's server), intervals, and the rules file's path."""
    cfg = yaml.safe_load(text if text is not None else PROMETHEUS_YML.read_text())
    original = copy.deepcopy(cfg)
    cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = SCRAPE
    cfg["rule_files"] = [str(ALERTS_YML)]
    for job in cfg["scrape_configs"]:
        target = {"simpool": simpool, "prometheus": prometheus}[job["job_name"]]
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [target]}]
    # Everything else (job names, metrics path, scrape options) is the repo's own.
    for new, old in zip(cfg["scrape_configs"], original["scrape_configs"], strict=True):
        assert {k: v for k, v in new.items() if k != "static_configs"} == {
            k: v for k, v in old.items() if k not in ("static_configs", "dns_sd_configs")
        }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.contextmanager
def run_prometheus(config: Path, port: int, tmp: Path) -> Iterator[str]:
    """Starts Prometheus on a loopback port with its own storage; always stops it."""
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(PROMETHEUS),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with running_process(cmd, f"{url}/-/ready", tmp / "prometheus.log", ready_timeout=30, stop_timeout=15):
        yield url


def query(prom: str, promql: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
    return body["data"]["result"]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    """Polls `check` until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def jpeg(seed: int) -> str:
    img = Image.new("RGB", (64 + seed, 48), (40 * seed % 256, 90, 160))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def own_counts(server: Server) -> dict[tuple[str, str, str], float]:
    """simpool_requests_total as the service itself exposes it: (endpoint, model, code) -> value."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "simpool_requests_total":
                out[(s.labels["endpoint"], s.labels["model"], s.labels["code"])] = s.value
    return out


@pytest.fixture(scope="module")
def scraped(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A dedicated simpool-serve (so that counts are exact) and a Prometheus scraping it."""
    tmp = tmp_path_factory.mktemp("prometheus")
    with start_server(model_repo, tmp, {"SIMPOOL_DEFAULT_MODEL": "resnet18"}) as server:
        host = server.url.removeprefix("http://")
        prom_port = free_port()  # Prometheus scrapes itself too, as in the repo's config
        config = loopback_config(host, f"127.0.0.1:{prom_port}", tmp)
        with run_prometheus(config, prom_port, tmp) as prom:
            yield server, prom


def test_prometheus_scrapes_the_service(scraped: tuple[Server, str]) -> None:
    server, prom = scraped
    wait_for("up == 1", lambda: query(prom, 'up{job="simpool"} == 1'))

    # Known traffic: 3 embeddings, 2 classifications, 1 undecodable image (400), 1 unknown model (404).
    with server.client() as c:
        for i in range(3):
            assert c.post("/embed", json={"images": [jpeg(i)]}).status_code == 200
        for i in range(2):
            assert c.post("/classify", json={"images": [jpeg(i)], "top_k": 3}).status_code == 200
        assert c.post("/embed", json={"images": ["bm90IGFuIGltYWdl"]}).status_code == 400
        assert c.post("/embed", json={"images": [jpeg(0)], "model": "nope"}).status_code == 404

    expected = {("/embed", "resnet18", "200"): 3.0, ("/classify", "resnet18", "200"): 2.0}
    own = own_counts(server)
    for key, value in expected.items():
        assert own.get(key) == value, f"service /metrics: {key} = {own.get(key)}; all: {own}"

    def prometheus_counts() -> dict[tuple[str, str, str], float] | None:
        result = query(prom, 'simpool_requests_total{job="simpool", endpoint=~"/embed|/classify"}')
        # Prometheus drops empty labels (model="" where no model was resolved).
        got = {}
        for r in result:
            labels = r["metric"]
            got[(labels["endpoint"], labels.get("model", ""), labels["code"])] = float(r["value"][1])
        return got if all(got.get(k) == v for k, v in expected.items()) and len(got) >= 4 else None

    got = wait_for("the request counters in Prometheus", prometheus_counts)
    # Prometheus holds exactly what the service counted, errors included.
    assert got == {k: v for k, v in own_counts(server).items() if k[0] in ("/embed", "/classify")}
    assert any(code == "400" for _, _, code in got) and any(code == "404" for _, _, code in got)
    # 5 images went through resnet18 (the batch-size histogram's sum counts images inferred).
    (images,) = wait_for(
        "images inferred",
        lambda: query(prom, 'sum(simpool_batch_size_sum{job="simpool", model="resnet18"}) == 5'),
    )
    assert float(images["value"][1]) == 5.0


def test_alert_rules_load_and_evaluate(scraped: tuple[Server, str]) -> None:
    _, prom = scraped

    def evaluated() -> list[dict] | None:
        groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules) else None

    rules = wait_for("a rule evaluation", evaluated)
    expected = {r["alert"] for g in load_yaml(ALERTS_YML)["groups"] for r in g["rules"]}
    assert {r["name"] for r in rules} == expected
    for rule in rules:
        assert rule["health"] == "ok", rule
        # The service is up and ready: no alert beyond "inactive".
        assert rule["state"] == "inactive", rule


def test_every_dashboard_query_runs_and_finds_data(scraped: tuple[Server, str]) -> None:
    """Each Grafana panel query, as Grafana would send it, is valid PromQL and returns series."""
    server, prom = scraped
    with server.client() as c:  # traffic of every kind the panels show, in case this runs alone
        assert c.post("/embed", json={"images": [jpeg(7), jpeg(8)]}).status_code == 200
        assert c.post("/embed", json={"images": ["bm90IGFuIGltYWdl"]}).status_code == 400
    exposed = {s.name for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
               for s in f.samples}  # fmt: skip
    for title, expr in dashboard_exprs():
        # Names the live service really exports (`up` is Prometheus's own, per target).
        assert metric_names(expr) <= exposed | {"up"}, f"{title}: {metric_names(expr) - exposed}"
        promql = concrete_promql(expr)
        wait_for(f"data for panel {title!r}: {promql}", lambda q=promql: query(prom, q))


def test_replica_down_alert_expression_sees_a_stopped_service(scraped: tuple[Server, str]) -> None:
    """Runs last in this module: stops the service and checks that SimPoolReplicaDown's expression fires."""
    server, prom = scraped
    (expr,) = [
        r["expr"]
        for g in load_yaml(ALERTS_YML)["groups"]
        for r in g["rules"]
        if r["alert"] == "SimPoolReplicaDown"
    ]
    assert query(prom, expr) == []  # up, so nothing to alert on
    server.proc.terminate()
    server.proc.wait(timeout=60)
    (series,) = wait_for("the replica-down expression to fire", lambda: query(prom, expr), timeout=20)
    assert series["metric"]["instance"] == server.url.removeprefix("http://")


def test_scraping_with_an_api_key_as_documented(model_repo: Path, tmp_path: Path) -> None:
    """With SIMPOOL_API_KEY set, /metrics needs the key; the commented `authorization` block of the repo's
    prometheus.yml, uncommented as the docs say, makes Prometheus send it."""
    key = "k3y-for-the-scrape"
    key_file = tmp_path / "simpool_api_key"
    key_file.write_text(key + "\n")  # as `echo KEY > file` writes it
    text = PROMETHEUS_YML.read_text()
    block = re.search(r"^( *)# authorization:\n(?:\1#   .*\n)+", text, re.M)
    assert block, "prometheus.yml has no commented authorization block"
    indent = block.group(1)
    uncommented = re.sub(rf"^{indent}# ", indent, block.group(0), flags=re.M)
    uncommented = uncommented.replace("/etc/prometheus/simpool_api_key", str(key_file))
    text = text.replace(block.group(0), uncommented)
    env = {"SIMPOOL_API_KEY": key, "SIMPOOL_DEFAULT_MODEL": "resnet18"}
    with start_server(model_repo, tmp_path, env) as server:
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
        port = free_port()
        config = loopback_config(server.url.removeprefix("http://"), f"127.0.0.1:{port}", tmp_path, text)
        job = next(
            j for j in yaml.safe_load(config.read_text())["scrape_configs"] if j["job_name"] == "simpool"
        )
        assert job["authorization"] == {"type": "Bearer", "credentials_file": str(key_file)}
        with run_prometheus(config, port, tmp_path) as prom:
            wait_for("an authorised scrape (up == 1)", lambda: query(prom, 'up{job="simpool"} == 1'))
            assert query(prom, 'simpool_ready{job="simpool"} == 1')


@pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Debian's prometheus package")
def test_promtool_accepts_the_repo_config_and_rules(tmp_path: Path) -> None:
    cfg = load_yaml(PROMETHEUS_YML)
    cfg["rule_files"] = [str(ALERTS_YML)]  # the repo's rules, where compose mounts them
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [str(PROMTOOL), "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n_rules = sum(len(g["rules"]) for g in load_yaml(ALERTS_YML)["groups"])
    assert f"SUCCESS: {n_rules} rules found" in proc.stdout + proc.stderr
