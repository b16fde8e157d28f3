"""The install path a user takes: `python -m build`, then `pip install` the wheel into a fresh venv.

`python -m build` makes the sdist and builds the wheel FROM the sdist (so a file missing
from the sdist fails here too). The wheel is installed into a new venv in tmp with only
`pip install avemo_edge-*.whl` (numpy comes as its dependency), then the extras
`avemo-edge[capture,ort]` from the local dist folder. Every command runs with cwd=tmp and a
clean environment (no PYTHONPATH, no repo venv), and one `run` runs under an audit hook that
fails on any file opened inside the source tree.

Offline when it can be: wheels come from a wheelhouse cached outside the repo
(`$AVEMO_WHEELHOUSE`, default ~/.cache/avemo-wheelhouse) with `--no-index`; only when a
wheel is missing there is it fetched once with `pip download` from the package index
(versions pinned to this venv's, so pip's own cache usually answers). ~30-60 s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from conftest import REPO, shipped

pytestmark = pytest.mark.slow

WHEELHOUSE = Path(os.environ.get("AVEMO_WHEELHOUSE", Path.home() / ".cache" / "avemo-wheelhouse"))
EXTRAS = "capture,ort"
PINNED = ("numpy", "opencv-python-headless", "onnxruntime", "sounddevice", "soundfile")
PROFILES = {p.name for p in (REPO / "edge" / "profiles").glob("*.toml")}
ASSETS = {p.name for p in (REPO / "edge" / "assets").iterdir() if p.is_file()}
BUNDLE_FILES = ("manifest.json", "model.onnx", "model.int8.onnx", "model.npz")

# Imported inside the fresh venv: fails the run when any file under the source tree is opened.
AUDITED_RUN = """
import sys
source, argv = sys.argv[1], sys.argv[2:]
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith(source):
        opened.append(args[0])
sys.addaudithook(hook)
from edge.cli import main
code = main(argv)
if opened:
    sys.exit(f"read from the source tree at run time: {sorted(set(opened))}")
sys.exit(code)
"""


def _sh(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _constraints(tmp: Path) -> Path:
    """Pin the third-party wheels to this venv's versions (pip's cache then has them)."""
    lines = []
    for name in PINNED:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    path = tmp / "constraints.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _pip_install(venv: Path, requirement: str, dist: Path, tmp: Path) -> None:
    """`pip install REQUIREMENT` offline from dist + wheelhouse; fill the wheelhouse first if needed."""
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    offline = [*pip, "install", "-q", "--no-index", "--find-links", str(dist), "--find-links", str(WHEELHOUSE),
               "-c", str(_constraints(tmp)), requirement]
    if subprocess.run(offline, cwd=tmp, capture_output=True).returncode == 0:
        return
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    fetch = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(WHEELHOUSE),
                            "--find-links", str(dist), "-c", str(_constraints(tmp)), requirement],
                           cwd=tmp, capture_output=True, text=True, timeout=600)
    if fetch.returncode != 0:
        pytest.skip(f"wheels for {requirement} are neither in {WHEELHOUSE} nor downloadable: {fetch.stderr[-300:]}")
    for own in WHEELHOUSE.glob("avemo_edge-*"):
        own.unlink()  # this project's wheel must come from `dist`, never from a stale copy
    _sh(offline, tmp)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="python -m build needs the `build` package (pip install avemo-edge[dev])")
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("dist")
    _sh([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)], cwd=out)
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed (numpy pulled in as its dependency)."""
    tmp = tmp_path_factory.mktemp("user")
    _sh([sys.executable, "-m", "venv", str(tmp / "venv")], cwd=tmp)
    (wheel,) = dist.glob("avemo_edge-*.whl")
    _pip_install(tmp / "venv", str(wheel), dist, tmp)
    return tmp / "venv"


def _members(dist: Path) -> tuple[set[str], set[str]]:
    (wheel,) = dist.glob("avemo_edge-*.whl")
    (sdist,) = dist.glob("avemo_edge-*.tar.gz")
    with zipfile.ZipFile(wheel) as z:
        in_wheel = set(z.namelist())
    with tarfile.open(sdist) as t:
        in_sdist = {name.split("/", 1)[1] for name in t.getnames() if "/" in name}
    return in_wheel, in_sdist


def test_wheel_and_sdist_carry_profiles_and_assets(dist):
    in_wheel, in_sdist = _members(dist)
    assert PROFILES and ASSETS
    for members in (in_wheel, in_sdist):
        assert {f"edge/profiles/{p}" for p in PROFILES} <= members
        assert {f"edge/assets/{a}" for a in ASSETS} <= members
        assert "edge/cli.py" in members and "edge/backends/numpy_int8.py" in members
    for doc in ("README.md", "docs/bundle-format.md", "docs/install-boards.md", "Makefile", "tools/arm_check.sh"):
        assert doc in in_sdist, f"{doc} missing from the sdist: MANIFEST.in"


def test_wheel_and_sdist_carry_the_shipped_models(dist):
    if not (shipped("audio") and shipped("face")):
        pytest.skip("edge/models/{audio,face} are not trained/shipped yet: nothing to package")
    in_wheel, in_sdist = _members(dist)
    for name in ("audio", "face", "face_detector"):
        manifest = json.loads((REPO / "edge" / "models" / name / "manifest.json").read_text())
        expected = {f"edge/models/{name}/{f}" for f in ("manifest.json", *manifest["files"])}
        assert expected <= in_wheel, f"missing from the wheel: {sorted(expected - in_wheel)}"
        assert expected <= in_sdist, f"missing from the sdist: {sorted(expected - in_sdist)}"
        assert name == "face_detector" or set(BUNDLE_FILES) <= {f.rsplit("/", 1)[1] for f in expected}
    assert {"edge/models/face_detector/LICENSE.txt", "edge/models/face_detector/SOURCE.txt"} <= in_wheel


def _run_lines(stdout: str) -> list[dict]:
    hops = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert hops, f"no JSON lines in:\n{stdout[-2000:]}"
    return hops


@pytest.fixture(scope="module")
def package(venv: Path, tmp_path_factory) -> Path:
    """The installed `edge` package folder; checks it and numpy are the fresh venv's."""
    cwd = tmp_path_factory.mktemp("cwd")
    where = _sh([str(venv / "bin" / "python"), "-c", "import edge, numpy; print(edge.__file__); print(numpy.__file__)"],
                cwd).stdout.split()
    for path in where:
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"{path} is not inside the fresh venv {venv}"
    return Path(where[0]).parent


@pytest.fixture(scope="module")
def base_info(venv: Path, package: Path, tmp_path_factory) -> dict:
    """`avemo-edge info` right after `pip install avemo_edge-*.whl`, before any extra."""
    return json.loads(_sh([str(venv / "bin" / "avemo-edge"), "info", "--profile", "rpi4"],
                          tmp_path_factory.mktemp("cwd")).stdout)


def test_base_install_is_numpy_only_and_finds_its_data(base_info):
    assert base_info["backends_installed"] == ["numpy"]
    assert base_info["profile"]["name"] == "rpi4"
    assert set(base_info["profiles_available"]) == {p.removesuffix(".toml") for p in PROFILES}
    if shipped("audio") and shipped("face"):
        assert {m["name"] for m in base_info["models"]} >= {"audio", "face"}
        assert all("error" not in m for m in base_info["models"]), base_info["models"]


def test_installed_wheel_runs_without_reading_the_source_tree(venv, package, bundles, tmp_path):
    run = _sh([str(venv / "bin" / "python"), "-c", AUDITED_RUN, str(REPO), "run",
               "--audio", str(package / "assets" / "demo.wav"), "--audio-model", bundles["audio"],
               "--duration", "3"], tmp_path)
    hops = _run_lines(run.stdout)
    assert any(h["audio"] and h["audio"]["voiced"] and h["audio"]["label"] for h in hops)


def test_installed_extras_capture_and_ort(venv, package, base_info, dist, bundles, tmp_path):
    _pip_install(venv, f"avemo-edge[{EXTRAS}]", dist, tmp_path)
    cli = str(venv / "bin" / "avemo-edge")
    info = json.loads(_sh([cli, "info"], tmp_path).stdout)
    assert {"numpy", "onnxruntime"} <= set(info["backends_installed"])
    assert isinstance(info["audio_input_devices"], list), info["audio_input_devices"]  # PortAudio loaded
    hops = _run_lines(_sh([cli, "run", "--audio", str(package / "assets" / "demo.wav"),
                           "--audio-model", bundles["audio"], "--backend", "onnxruntime", "--duration", "3"],
                          tmp_path).stdout)
    assert any(h["audio"] and h["audio"]["label"] for h in hops)
    hops = _run_lines(_sh([cli, "run", "--video", str(package / "assets" / "demo.mp4"), "--no-audio",
                           "--face-model", bundles["face"], "--duration", "2"], tmp_path).stdout)
    assert any(h["face"] and h["face"]["box"] for h in hops), "the CNN face detector found no face"
