"""Deployment files: docker-compose.yml (+ the GPU and Milvus overrides, the nginx site of the
latter), the two Dockerfiles, .dockerignore, deploy/sasreid.env.example and deploy/README.md.

No Docker engine is needed: the compose files are parsed with PyYAML, the Dockerfiles with the
small instruction parser below, and everything is checked against the real code it deploys: the
``Settings`` class (which ``SASREID_*`` variables exist, their defaults and how values parse),
``sasreid serve``'s argument parser, pyproject.toml and constraints-cpu.txt. The health-check
commands are executed against a local HTTP server. ``docker compose config`` runs only where the
Compose v2 client plugin is installed.
"""

from __future__ import annotations

import argparse
import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.core.config import ConfigError, Settings
from service.serve_cli import add_arguments

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
COMPOSE_MILVUS = ROOT / "docker-compose.milvus.yml"
NGINX_CONF = ROOT / "deploy" / "nginx" / "sasreid.conf"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERFILE_GPU = ROOT / "deploy" / "Dockerfile.gpu"
ENV_EXAMPLE = ROOT / "deploy" / "sasreid.env.example"
README = ROOT / "deploy" / "README.md"
DOCKERIGNORE = ROOT / ".dockerignore"

# Variables documented as coming (deploy/README.md) before the Settings class reads them. They may
# appear only in the README, on a line that says "coming", and never in the settings table. Once
# the field exists the name is an ordinary setting (and must then be in the table).
PLANNED_SETTINGS = {"SASREID_MODEL"}

SASREID_NAME = re.compile(r"\bSASREID_[A-Z0-9_]*[A-Z0-9]\b")


# ---- Settings -----------------------------------------------------------------------------------


def field_env_names(name: str) -> list[str]:
    """The environment variables a ``Settings`` field is read from: env_prefix + field name, or its
    alias(es) when it has one (pydantic-settings then ignores the prefix)."""
    field = Settings.model_fields[name]
    alias = field.validation_alias or field.alias
    if alias is None:
        return [f"{Settings.model_config.get('env_prefix', '')}{name}".upper()]
    if isinstance(alias, str):
        return [alias.upper()]
    return [str(choice).upper() for choice in alias.choices if isinstance(choice, str)]  # AliasChoices


def settings_env_names() -> set[str]:
    return {env for name in Settings.model_fields for env in field_env_names(name)}


def env_name(field: str) -> str:
    """The field's main variable (the one the README table lists)."""
    return field_env_names(field)[0]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process environment without SASREID_* variables; set what a test needs on the result."""
    import os

    for key in list(os.environ):
        if key.upper().startswith("SASREID_"):
            monkeypatch.delenv(key)
    return monkeypatch


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_settings_env_names_are_derived_from_the_class() -> None:
    names = settings_env_names()
    assert len(names) == len(Settings.model_fields)
    assert {"SASREID_CHECKPOINT", "SASREID_STORE", "SASREID_WRITE_KEYS", "SASREID_READ_KEYS"} <= names


# ---- Dockerfile parser --------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        text = self.args.strip()
        return json.loads(text) if text.startswith("[") else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their (joined) arguments; comments and line continuations handled."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1])
            continue
        parts.append(stripped)
        joined = " ".join(p.strip() for p in parts if p.strip())
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    assert not parts, "the Dockerfile ends inside a line continuation"
    return out


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """``--flag=value`` options in front of an instruction's arguments, and the rest."""
    flags: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        token, _, rest = rest.partition(" ")
        key, _, value = token[2:].partition("=")
        flags[key] = value
        rest = rest.lstrip()
    return flags, rest


def key_values(args: str) -> dict[str, str]:
    """``ENV``/``ARG`` arguments: ``K=V K2="V 2"`` or the legacy ``K V``."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.partition("=")[::2] for token in tokens)


@dataclass
class Dockerfile:
    path: Path
    instructions: list[Instruction]

    @classmethod
    def load(cls, path: Path) -> Dockerfile:
        return cls(path, parse_dockerfile(path.read_text()))

    def stages(self) -> list[list[Instruction]]:
        stages: list[list[Instruction]] = []
        for ins in self.instructions:
            if ins.keyword == "FROM":
                stages.append([])
            if stages:
                stages[-1].append(ins)
        return stages

    def global_args(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for ins in self.instructions:
            if ins.keyword == "FROM":
                break
            if ins.keyword == "ARG":
                found.update(key_values(ins.args))
        return found

    def images(self) -> list[str]:
        """Each stage's base image with the global ARG defaults substituted."""
        args = self.global_args()
        images = []
        for stage in self.stages():
            image = shlex.split(stage[0].args)[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
        return images

    def final(self) -> list[Instruction]:
        return self.stages()[-1]

    def final_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for ins in self.final():
            if ins.keyword == "ENV":
                env.update(key_values(ins.args))
        return env

    def stage_args(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for stage in self.stages():
            for ins in stage:
                if ins.keyword == "ARG":
                    found.update(key_values(ins.args))
        return found

    def runs(self) -> list[str]:
        return [ins.args for ins in self.instructions if ins.keyword == "RUN"]

    def commands(self) -> Iterator[list[str]]:
        """Every shell command of every RUN (split on ``&&``), as tokens."""
        for run in self.runs():
            for command in run.split("&&"):
                tokens = shlex.split(command, comments=False)
                if tokens:
                    yield tokens

    def copy_sources(self) -> list[str]:
        sources = []
        for ins in self.instructions:
            if ins.keyword in ("COPY", "ADD"):
                flags, rest = split_flags(ins.args)
                if "from" in flags:
                    continue
                form = Instruction(ins.keyword, rest, ins.line).exec_form()
                tokens = form if form is not None else shlex.split(rest)
                sources.extend(tokens[:-1])
        return sources


DOCKERFILES = [pytest.param(DOCKERFILE, id="cpu"), pytest.param(DOCKERFILE_GPU, id="gpu")]


def test_parser_joins_continuations_and_drops_comments() -> None:
    text = "# c\nARG A=1\nFROM x:${A} AS b\nRUN one \\\n    # inner comment\n    two \\\n    three\nUSER 5\n"
    parsed = parse_dockerfile(text)
    assert [(i.keyword, i.args) for i in parsed] == [
        ("ARG", "A=1"), ("FROM", "x:${A} AS b"), ("RUN", "one two three"), ("USER", "5")]
    assert parsed[2].line == 4


@pytest.mark.parametrize("path", DOCKERFILES)
def test_image_runs_as_non_root_user(path: Path) -> None:
    final = Dockerfile.load(path).final()
    start = max(i for i, ins in enumerate(final) if ins.keyword in ("ENTRYPOINT", "CMD"))
    users = [ins.args for ins in final[:start] if ins.keyword == "USER"]
    assert users, f"{path.name}: no USER before the final ENTRYPOINT/CMD"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{path.name}: runs as {users[-1]}"
    assert not any(ins.keyword == "USER" for ins in final[start:])


@pytest.mark.parametrize("path", DOCKERFILES)
def test_entrypoint_is_sasreid_serve_on_all_interfaces(path: Path) -> None:
    df = Dockerfile.load(path)
    final = df.final()
    entry = [ins for ins in final if ins.keyword == "ENTRYPOINT"][-1].exec_form()
    cmd = [ins for ins in final if ins.keyword == "CMD"][-1].exec_form()
    assert entry == ["sasreid", "serve"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.parse_args(cmd)  # the default CMD is a valid `sasreid serve` argument list
    env = df.final_env()
    host = env.get("SASREID_HOST")
    if "--host" in cmd:
        host = cmd[cmd.index("--host") + 1]
    assert host == "0.0.0.0"
    exposed = [ins.args.split("/")[0] for ins in final if ins.keyword == "EXPOSE"]
    assert exposed == [env["SASREID_PORT"]] == ["8000"]
    assert env["SASREID_CHECKPOINT"] == "/models/checkpoint"


# ---- health checks, executed ------------------------------------------------------------------


class _Ready(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: list[str]

    def do_GET(self) -> None:
        self.paths.append(self.path)
        code = self.status if self.path == "/readyz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def ready_server() -> Iterator[tuple[int, type[_Ready]]]:
    handler = type("Handler", (_Ready,), {"paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(test: list[str], port: int) -> int:
    """Run an exec-form health check (``["python", "-c", CODE]``) with this interpreter."""
    assert test[0] == "python" and test[1] == "-c", test
    result = subprocess.run([sys.executable, "-c", test[2]], env={"SASREID_PORT": str(port)},
                            capture_output=True, timeout=30)
    return result.returncode


def assert_healthcheck_follows_readyz(test: list[str], server: tuple[int, type[_Ready]]) -> None:
    port, handler = server
    handler.status = 200
    assert run_healthcheck(test, port) == 0
    handler.status = 503
    assert run_healthcheck(test, port) != 0
    assert handler.paths == ["/readyz", "/readyz"]


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_healthcheck_hits_readyz(path: Path, ready_server: tuple[int, type[_Ready]]) -> None:
    checks = [ins for ins in Dockerfile.load(path).final() if ins.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    flags, rest = split_flags(checks[0].args)
    assert "start-period" in flags
    keyword, _, command = rest.partition(" ")
    assert keyword == "CMD"
    assert_healthcheck_follows_readyz(json.loads(command), ready_server)


def test_compose_healthchecks(ready_server: tuple[int, type[_Ready]]) -> None:
    services = load_compose()["services"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    test = services["api"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert_healthcheck_follows_readyz(test[1:], ready_server)


# ---- build context ------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerignore_matcher() -> None:
    patterns = ["**", "!model", "**/__pycache__"]
    assert dockerignore_excludes("x.txt", patterns)
    assert not dockerignore_excludes("model/a/b.py", patterns)
    assert dockerignore_excludes("model/a/__pycache__/b.pyc", patterns)


def required_build_inputs() -> set[str]:
    """What ``pip install .`` needs: pyproject.toml, its readme and every package it installs."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()
                and any(fnmatch.fnmatch(p.name, pattern) for pattern in include)}
    assert packages, include
    return {"pyproject.toml", project["project"]["readme"], *packages}


@pytest.mark.parametrize("path", DOCKERFILES)
def test_copy_sources_exist_and_are_in_the_build_context(path: Path) -> None:
    sources = [s.rstrip("/") for s in Dockerfile.load(path).copy_sources()]
    patterns = dockerignore_patterns()
    for source in sources:
        assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such file in the repository"
        assert not dockerignore_excludes(source, patterns), f"{path.name}: COPY {source} is .dockerignored"
    assert required_build_inputs() <= set(sources)


def test_dockerignore_keeps_only_what_the_images_copy() -> None:
    patterns = dockerignore_patterns()
    for junk in (".git/HEAD", ".venv/bin/python", "data/synthxfd/x.png", "runs/probe3/log.jsonl",
                 "demo/report.html", "bench/RESULTS.md", "tests/conftest.py", "deploy/sasreid.env",
                 "model/__pycache__/config.cpython-311.pyc", "checkpoints/sas-vpreid/model.safetensors",
                 "model.onnx", "sasreid.egg-info/PKG-INFO"):
        assert dockerignore_excludes(junk, patterns), junk
    copied = {s.rstrip("/") for p in (DOCKERFILE, DOCKERFILE_GPU) for s in Dockerfile.load(p).copy_sources()}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = tracked.stdout.split()
    assert "service/core/config.py" in files
    for file in files:
        in_context = not dockerignore_excludes(file, patterns)
        used = any(file == c or file.startswith(c + "/") for c in copied)
        assert in_context == used, f"{file}: in build context {in_context}, copied {used}"


# ---- the CPU image ------------------------------------------------------------------------------


def cpu_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-cpu.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    return pins


def test_cpu_image_installs_the_pinned_cpu_torch() -> None:
    df = Dockerfile.load(DOCKERFILE)
    pins = cpu_pins()
    torch_installs = [c for c in df.commands() if c[:2] == ["pip", "install"] and any(
        t.startswith("torch==") for t in c)]
    assert len(torch_installs) == 1
    command = torch_installs[0]
    assert f"torch=={pins['torch']}" in command and f"torchvision=={pins['torchvision']}" in command
    assert command[command.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    project = [c for c in df.commands() if c[:2] == ["pip", "install"] and "." in c]
    assert len(project) == 1 and project[0][project[0].index("-c") + 1] == "constraints-cpu.txt"
    assert all("--no-cache-dir" in c for c in df.commands() if c[:2] == ["pip", "install"])
    text = " ".join(df.runs())
    assert "faiss-gpu" not in text and "onnxruntime-gpu" not in text
    assert len(df.stages()) >= 2, "multi-stage build expected"


# ---- the GPU image ------------------------------------------------------------------------------


def test_gpu_image_is_cuda_12_with_mamba_faiss_gpu_and_onnxruntime_gpu() -> None:
    df = Dockerfile.load(DOCKERFILE_GPU)
    images = df.images()
    assert images[0].startswith("nvidia/cuda:12.") and "-cudnn-devel-" in images[0]
    assert images[-1].startswith("nvidia/cuda:12.") and "-cudnn-runtime-" in images[-1]
    args = df.stage_args()
    assert args["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu12\d", args["TORCH_INDEX_URL"])

    mamba = [run for run in df.runs() if "mamba-ssm" in run]
    assert len(mamba) == 1
    for needed in ("MAMBA_FORCE_BUILD=TRUE", 'TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}"',
                   "pip wheel", "--no-build-isolation"):
        assert needed in mamba[0], needed

    commands = list(df.commands())
    uninstall = [c for c in commands if c[:2] == ["pip", "uninstall"]]
    assert uninstall and {"faiss-cpu", "onnxruntime"} <= set(uninstall[0])
    gpu_install = [c for c in commands if c[:2] == ["pip", "install"]
                   and any(t.startswith("faiss-gpu-cu12") for t in c)]
    assert gpu_install and any(t.startswith("onnxruntime-gpu") for t in gpu_install[0])
    assert commands.index(uninstall[0]) < commands.index(gpu_install[0])
    assert args["ONNXRUNTIME_GPU_VERSION"].startswith("1.")
    assert all("--no-cache-dir" in c for c in commands if c[:2] == ["pip", "install"])


def test_gpu_image_mamba_patch_leaves_only_torch_cuda_arch_list() -> None:
    """The sed in Dockerfile.gpu removes a setup.py's hard-coded -gencode list (which would make
    torch ignore TORCH_CUDA_ARCH_LIST) and keeps the file valid Python."""
    run = next(run for run in Dockerfile.load(DOCKERFILE_GPU).runs() if "mamba-ssm" in run)
    expression = re.search(r"sed -i -E '([^']+)' setup\.py", run)
    assert expression
    sample = (
        "cc_flag = []\n"
        "if bare_metal_version <= Version('12.9'):\n"
        '    cc_flag.append("-gencode")\n'
        '    cc_flag.append("arch=compute_70,code=sm_70")\n'
        'cc_flag.append("-gencode")\n'
        'cc_flag.append("arch=compute_90a,code=sm_90a")\n'
        'cc_flag.append("-DBUILD_PYTHON_PACKAGE")\n'
    )
    patched = subprocess.run(["sed", "-E", expression.group(1)], input=sample, capture_output=True,
                             text=True, check=True).stdout
    assert "gencode" not in patched and "arch=compute" not in patched
    assert 'cc_flag.append("-DBUILD_PYTHON_PACKAGE")' in patched
    compile(patched, "setup.py", "exec")


# ---- docker-compose.yml -------------------------------------------------------------------------


class _Reset:
    """Compose's ``!reset`` tag: the key goes back to its default (nothing) in the merged file."""


class _Override:
    """Compose's ``!override`` tag: the value replaces the base file's instead of merging."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())
_ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: _Override(
        loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode)
        else loader.construct_scalar(node)
    ),
)


def _merge(base: Any, override: Any) -> Any:
    if isinstance(override, _Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, _Reset):
                merged.pop(key, None)
            else:
                merged[key] = _merge(base[key], value) if key in base else _merge(None, value)
        return merged
    # Lists are replaced, which is what Compose does for the ones these files override (a base
    # `ports:` list is merged by Compose instead, hence the milvus file's `ports: !reset []`).
    return override


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def load_compose(*, gpu: bool = False, milvus: bool = False) -> dict[str, Any]:
    files = [COMPOSE, *([COMPOSE_GPU] if gpu else []), *([COMPOSE_MILVUS] if milvus else [])]
    merged: dict[str, Any] = {}
    for path in files:
        doc = yaml.load(path.read_text(), Loader=_ComposeLoader)
        for service in (doc.get("services") or {}).values():
            if "environment" in service:
                service["environment"] = _environment(service)
        merged = _merge(merged, doc)
    return merged


def defaults(value: str) -> str:
    """Compose interpolation with every variable unset: ``${X:-d}`` -> d, ``${X}`` -> ''."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def volume_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            kind = "bind" if source.startswith((".", "/", "$", "~")) else "volume"
            mounts.append({"type": kind, "source": source, "target": target,
                           "read_only": bool(mode) and "ro" in mode[0].split(",")})
        else:
            mounts.append(entry)
    return mounts


def test_compose_has_api_and_redis() -> None:
    services = load_compose()["services"]
    assert {"api", "redis"} <= set(services)
    build = services["api"]["build"]
    assert (ROOT / build["context"]).resolve() == ROOT
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_redis_appendonly_everysec_on_a_named_volume() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    command = redis["command"]
    command = shlex.split(command) if isinstance(command, str) else command
    pairs = dict(zip(command[1::2], command[2::2]))
    assert command[0] == "redis-server"
    assert pairs["--appendonly"] == "yes" and pairs["--appendfsync"] == "everysec"
    data = [m for m in volume_mounts(redis) if m["target"] == "/data"]
    assert len(data) == 1 and data[0]["type"] == "volume"
    assert data[0]["source"] in (compose.get("volumes") or {})
    assert not redis.get("ports"), "Redis must not be published"


def test_api_settings_checkpoint_mount_env_file_and_ports() -> None:
    compose = load_compose()
    api = compose["services"]["api"]
    env = api["environment"]
    assert env["SASREID_STORE"] == "redis://redis:6379/0"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"

    mounts = {m["target"]: m for m in volume_mounts(api)}
    checkpoint = mounts[env["SASREID_CHECKPOINT"]]
    assert checkpoint["type"] == "bind" and checkpoint["read_only"] is True
    for mount in mounts.values():
        if mount["type"] == "volume":
            assert mount["source"] in compose["volumes"]

    env_files = api["env_file"] if isinstance(api["env_file"], list) else [api["env_file"]]
    env_files = [e if isinstance(e, str) else e["path"] for e in env_files]
    assert "deploy/sasreid.env" in env_files
    assert (ROOT / "deploy/sasreid.env.example").is_file()

    (port,) = api["ports"]
    host_ip, host_port, container_port = defaults(port).rsplit(":", 2)
    assert host_ip == "127.0.0.1" and host_port == "8000"
    assert container_port == env["SASREID_PORT"] == Dockerfile.load(DOCKERFILE).final_env()["SASREID_PORT"]


def test_gpu_override_reserves_an_nvidia_gpu() -> None:
    api = load_compose(gpu=True)["services"]["api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert (ROOT / api["build"]["dockerfile"]).resolve() == DOCKERFILE_GPU
    assert api["environment"]["SASREID_DEVICE"] == "cuda"
    arch = defaults(api["build"]["args"]["TORCH_CUDA_ARCH_LIST"])
    assert arch == Dockerfile.load(DOCKERFILE_GPU).stage_args()["TORCH_CUDA_ARCH_LIST"]
    assert load_compose()["services"]["api"]["environment"]["SASREID_DEVICE"] == "cpu"


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    """``docker compose config -q`` (no engine needed). Run on a copy of the files, with the env
    example as deploy/sasreid.env: the real env file holds secrets and is not in the repository."""
    if not _compose_plugin():
        pytest.skip("the docker compose v2 client plugin is not installed")
    for path in (COMPOSE, COMPOSE_GPU, COMPOSE_MILVUS, NGINX_CONF, DOCKERFILE, DOCKERFILE_GPU):
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    shutil.copy(ENV_EXAMPLE, tmp_path / "deploy" / "sasreid.env")
    (tmp_path / "checkpoints" / "sas-vpreid").mkdir(parents=True)
    env = {**os.environ, "MINIO_ROOT_USER": "sasreid", "MINIO_ROOT_PASSWORD": "not-a-real-secret"}
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"],
                  ["docker-compose.yml", "docker-compose.milvus.yml"],
                  ["docker-compose.yml", "docker-compose.gpu.yml", "docker-compose.milvus.yml"]):
        argv = ["docker", "compose"] + [x for f in files for x in ("-f", f)] + ["config", "-q"]
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stderr
    # The MinIO credentials are required: without them Compose refuses to start anything.
    argv = ["docker", "compose", "-f", "docker-compose.yml", "-f", "docker-compose.milvus.yml", "config", "-q"]
    bare = {k: v for k, v in env.items() if not k.startswith("MINIO_")}
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=bare)
    assert result.returncode != 0 and "MINIO_ROOT_" in result.stderr


# ---- SASREID_* names and values -----------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU, COMPOSE_MILVUS, ENV_EXAMPLE, README, DOCKERFILE, DOCKERFILE_GPU],
                         ids=lambda p: p.name)
def test_every_sasreid_variable_is_a_setting(path: Path) -> None:
    real = settings_env_names()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for name in SASREID_NAME.findall(line):
            if name in real:
                continue
            planned = path == README and name in PLANNED_SETTINGS and "coming" in line.lower()
            assert planned and not line.startswith("|"), f"{path.name}:{number}: {name} is not a setting"


def env_example_assignments() -> list[tuple[str, str, bool]]:
    """(name, value, commented_out) for every ``SASREID_X=value`` line of the env example."""
    found = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(#\s*)?(SASREID_\w+)=(.*)", line.strip())
        if match:
            found.append((match.group(2), match.group(3), match.group(1) is not None))
    return found


def test_env_example_commented_values_are_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    defaults_ = Settings()
    commented = [(n, v) for n, v, c in env_example_assignments() if c]
    assert commented
    fields = {env_name(f): f for f in Settings.model_fields}
    for name, value in commented:
        clean_env.setenv(name, value)
        parsed = Settings()
        clean_env.delenv(name)
        field = fields[name]
        assert getattr(parsed, field) == getattr(defaults_, field), f"{name}={value} is not the default"


def test_env_example_names_what_compose_fixes() -> None:
    """The example's note "Fixed by docker-compose.yml: ..." lists exactly the api environment."""
    text = ENV_EXAMPLE.read_text()
    start = text.index("Fixed by docker-compose.yml")
    note = text[start: text.index("\n\n", start)]
    assert set(SASREID_NAME.findall(note)) == set(load_compose()["services"]["api"]["environment"])
    uncommented = {name for name, _, commented in env_example_assignments() if not commented}
    assert {"SASREID_WRITE_KEYS", "SASREID_READ_KEYS"} <= uncommented
    assert not uncommented & set(load_compose()["services"]["api"]["environment"])


def container_env(*, gpu: bool) -> dict[str, str]:
    """SASREID_* variables the deployment fixes: Dockerfile ENV, overridden by compose environment."""
    dockerfile = DOCKERFILE_GPU if gpu else DOCKERFILE
    env = {k: v for k, v in Dockerfile.load(dockerfile).final_env().items() if k.startswith("SASREID_")}
    env.update(load_compose(gpu=gpu)["services"]["api"]["environment"])
    return env


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_container_settings_need_keys_and_use_redis(gpu: bool, clean_env: pytest.MonkeyPatch) -> None:
    """The container's settings as Compose assembles them: image ENV < env_file < environment."""
    env = {k: v for k, v in Dockerfile.load(DOCKERFILE_GPU if gpu else DOCKERFILE).final_env().items()
           if k.startswith("SASREID_")}
    env.update({name: value for name, value, commented in env_example_assignments() if not commented})
    env.update(load_compose(gpu=gpu)["services"]["api"]["environment"])
    settings = settings_from(env, clean_env)
    with pytest.raises(ConfigError, match="no API keys"):
        settings.check_serviceable()  # the example ships without keys: the server refuses to start

    env["SASREID_WRITE_KEYS"] = "w1,w2"
    settings = settings_from(env, clean_env)
    settings.check_serviceable()
    assert settings.auth is True and settings.write_key_values() == [b"w1", b"w2"]
    assert settings.store_url == "redis://redis:6379/0"
    assert str(settings.checkpoint) == "/models/checkpoint"
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert settings.device == ("cuda" if gpu else "cpu")


# ---- deploy/README.md ---------------------------------------------------------------------------


def readme_settings_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in README.read_text().splitlines():
        if line.startswith("| `SASREID_"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            name = cells[0].strip("`")
            assert name not in rows, f"{name} listed twice"
            rows[name] = cells
    return rows


def _format_default(value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


def test_readme_table_lists_every_setting_with_flag_default_and_deployment_value() -> None:
    rows = readme_settings_rows()
    assert set(rows) == {env_name(field) for field in Settings.model_fields}
    assert set(rows) <= settings_env_names()

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
    cpu, gpu = container_env(gpu=False), container_env(gpu=True)
    for field_name, field in Settings.model_fields.items():
        variable, flag, default, deployed, meaning = rows[env_name(field_name)]
        assert flag == (f"`{flags[field_name]}`" if field_name in flags else ""), variable
        value = field.default_factory() if field.default_factory is not None else field.default
        assert default == _format_default(value), variable
        c, g = cpu.get(variable.strip("`")), gpu.get(variable.strip("`"))
        expected = "-" if c is None and g is None else f"`{c}`" if c == g else f"`{c}`; GPU: `{g}`"
        assert deployed == expected, variable
        assert meaning, variable


def test_readme_documents_the_compose_commands_and_durability() -> None:
    text = README.read_text()
    assert "docker compose up -d --build" in text
    assert "docker compose -f docker-compose.yml -f docker-compose.gpu.yml up -d --build" in text
    assert "--clip-weights" in text and "sasreid reembed" in text
    for needed in ("appendfsync everysec", "appendfsync always", "BGSAVE", ".backup", "config.json",
                   "model.safetensors"):
        assert needed in text, needed


# ---- docker-compose.milvus.yml: Milvus, replicas and the proxy -----------------------------------


def milvus_env() -> dict[str, str]:
    """The replicas' SASREID_* settings: Dockerfile ENV < env example < base + milvus environment."""
    env = {k: v for k, v in Dockerfile.load(DOCKERFILE).final_env().items() if k.startswith("SASREID_")}
    env.update({name: value for name, value, commented in env_example_assignments() if not commented})
    env.update(load_compose(milvus=True)["services"]["api"]["environment"])
    return env


def test_milvus_override_adds_milvus_with_etcd_and_minio_replicas_and_a_proxy() -> None:
    compose = load_compose(milvus=True)
    services = compose["services"]
    assert {"api", "redis", "milvus", "etcd", "minio", "proxy"} <= set(services)
    milvus = services["milvus"]
    assert milvus["image"].startswith("milvusdb/milvus:v2.5.")  # the engine pymilvus 2.5 speaks to
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"
    # Milvus logs in to MinIO with MinIO's own root credentials, which Compose requires to be set.
    for milvus_key, minio_key in (("MINIO_ACCESS_KEY_ID", "MINIO_ROOT_USER"), ("MINIO_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD")):
        value = milvus["environment"][milvus_key]
        assert value == services["minio"]["environment"][minio_key]
        assert re.fullmatch(rf"\$\{{{minio_key}:\?[^}}]+\}}", value), value

    api = services["api"]
    assert int(defaults(str(api["deploy"]["replicas"]))) >= 2
    assert "ports" not in api, "replicas cannot share a host port: only the proxy is published"
    assert api["build"]["args"]["INSTALL_EXTRAS"] == "milvus"
    assert api["depends_on"]["redis"]["condition"] == api["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert milvus["depends_on"] == {"etcd": {"condition": "service_healthy"}, "minio": {"condition": "service_healthy"}}
    for name, service in services.items():
        for needed, how in (service.get("depends_on") or {}).items():
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in services[needed], f"{name} waits for {needed}, which has no health check"
        if name != "proxy":
            assert not service.get("ports"), f"{name} must not be published"
    for mount in (m for s in services.values() for m in volume_mounts(s)):
        if mount["type"] == "volume":
            assert mount["source"] in compose["volumes"], mount

    # Redis keeps the base file's append-only file.
    command = services["redis"]["command"]
    assert dict(zip(command[1::2], command[2::2]))["--appendonly"] == "yes"


def test_milvus_replicas_settings_are_valid_and_shared(clean_env: pytest.MonkeyPatch) -> None:
    env = milvus_env()
    env["SASREID_WRITE_KEYS"] = "w1"
    settings = settings_from(env, clean_env)
    settings.check_serviceable()
    assert settings.index == "milvus" and settings.milvus_uri == "http://milvus:19530"
    assert settings.snapshot_dir is None  # cleared: FAISS snapshots do not apply to Milvus
    assert settings.store_url == "redis://redis:6379/0"  # one Redis for every replica
    assert 0 < settings.sync_interval <= 1.0  # replicas see each other's writes within about a second
    service = load_compose(milvus=True)["services"]["milvus"]
    assert settings.milvus_uri.rsplit(":", 1)[-1] == "19530" and "healthcheck" in service
    # The GPU file stacks under it: the GPU device stays, the index is Milvus.
    stacked = load_compose(gpu=True, milvus=True)["services"]["api"]
    assert stacked["environment"]["SASREID_DEVICE"] == "cuda" and stacked["environment"]["SASREID_INDEX"] == "milvus"
    assert stacked["build"]["dockerfile"] == "deploy/Dockerfile.gpu" and stacked["build"]["args"]["INSTALL_EXTRAS"] == "milvus"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfiles_install_the_extras_build_argument(path: Path) -> None:
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "milvus" in extras and any(dep.startswith("pymilvus") for dep in extras["milvus"])
    df = Dockerfile.load(path)
    assert df.stage_args()["INSTALL_EXTRAS"] == ""  # off unless a compose file asks for it
    runs = [run for run in df.runs() if "INSTALL_EXTRAS" in run]
    assert len(runs) == 1 and '".[${INSTALL_EXTRAS}]"' in runs[0] and "--no-cache-dir" in runs[0]
    if path == DOCKERFILE_GPU:  # before the faiss-gpu swap, which a later resolution would undo
        assert df.runs().index(runs[0]) < next(i for i, r in enumerate(df.runs()) if "faiss-gpu" in r)


def nginx_directives(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(directive, arguments, enclosing block names) of an nginx config, comments dropped."""
    out: list[tuple[str, list[str], list[str]]] = []
    stack: list[str] = []
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};]+', re.sub(r"#[^\n]*", "", text))
    current: list[str] = []
    for token in tokens:
        if token == "{":
            stack.append(" ".join(current))
            current = []
        elif token == "}":
            stack.pop()
        elif token == ";":
            out.append((current[0], current[1:], list(stack)))
            current = []
        else:
            current.append(token.strip('"'))
    assert not stack and not current, "unbalanced nginx config"
    return out


def test_nginx_proxies_to_every_replica_with_the_apis_limits() -> None:
    proxy = load_compose(milvus=True)["services"]["proxy"]
    (mount,) = [m for m in volume_mounts(proxy) if m["target"].startswith("/etc/nginx")]
    assert mount["type"] == "bind" and mount["read_only"] and (ROOT / mount["source"]).resolve() == NGINX_CONF
    directives = nginx_directives(NGINX_CONF.read_text())

    def values(name: str) -> list[list[str]]:
        return [args for d, args, _ in directives if d == name]

    (port,) = proxy["ports"]
    host_ip, host_port, container_port = defaults(port).rsplit(":", 2)
    assert (host_ip, host_port) == ("127.0.0.1", "8000")  # as the base file published the API
    assert values("listen") == [[container_port]]
    # Docker's DNS returns one address per replica; `resolve` follows restarts and scaling.
    assert values("resolver")[0][0] == "127.0.0.11"
    (server,) = [args for d, args, blocks in directives if d == "server" and blocks == ["upstream sasreid_api"]]
    host, _, api_port = server[0].partition(":")
    assert host == "api" and "resolve" in server[1:] and values("zone")
    assert api_port == load_compose(milvus=True)["services"]["api"]["environment"]["SASREID_PORT"]
    assert values("proxy_pass") == [["http://sasreid_api"]]
    # A request the API accepts is never refused by the proxy first (the API answers 413 itself).
    (size,) = values("client_max_body_size")
    assert size[0].endswith("m") and int(size[0][:-1]) * 1024 * 1024 >= Settings.model_fields["max_request_bytes"].default
    # Only connection failures move to another replica: an enroll is never sent twice.
    assert values("proxy_next_upstream") == [["error"]]
    assert proxy["healthcheck"]["test"][-1].endswith("/healthz")
