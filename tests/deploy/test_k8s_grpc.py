"""The gRPC door in the Kubernetes manifests: the port declared where traffic and probes reach it, and
KServe's gRPC runtime on its own (Knative routes one container port, kserve#1499). The generic checks
(schemas, strict validation, checkov, settings) run on the `kserve-grpc` variant in test_k8s.py."""

from __future__ import annotations

from tests.deploy.test_k8s import env_of, one, rendered  # noqa: F401  (the rendered fixture)


def test_service_deployment_and_policy_declare_grpc(rendered: dict[str, list[dict]]) -> None:  # noqa: F811
    for name in ("cpu", "gpu"):
        docs = rendered[name]
        (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == int(env_of(container)["SIMPOOL_GRPC_PORT"]) == 8001
        service = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
        assert (
            service["grpc"]["targetPort"] == "grpc" and service["grpc"]["appProtocol"] == "kubernetes.io/h2c"
        )
        allowed = {p["port"] for rule in one(docs, "NetworkPolicy")["spec"]["ingress"] for p in rule["ports"]}
        assert "grpc" in allowed


def test_kserve_grpc_runtime_has_one_port_and_grpc_probes(rendered: dict[str, list[dict]]) -> None:  # noqa: F811
    runtime = one(rendered["kserve-grpc"], "ServingRuntime")
    assert runtime["metadata"]["name"] == "simpool-serve-grpc"
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    (container,) = runtime["spec"]["containers"]
    (port,) = container["ports"]
    grpc_port = int(env_of(container)["SIMPOOL_GRPC_PORT"])
    assert port["name"] == "h2c" and port["containerPort"] == grpc_port
    assert container["readinessProbe"]["grpc"]["port"] == grpc_port
    service = one(rendered["kserve-grpc"], "InferenceService")["spec"]["predictor"]["model"]
    assert service["runtime"] == "simpool-serve-grpc" and service["protocolVersion"] == "grpc-v2"
    (http,) = one(rendered["kserve"], "ServingRuntime")["spec"]["containers"]
    assert env_of(http)["SIMPOOL_GRPC_PORT"] == "0", "the HTTP runtime's pods route no gRPC"
