"""The release workflow cannot run here; this checks what can be checked without GitHub: it is valid
YAML with the jobs and runners the release needs, its actions are pinned to current major versions,
every `run:` step is valid shell whose commands exist on the runner it runs on, the files and tests it
names exist, and the size gate's rule."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
sys.path.insert(0, str(REPO / "build"))
import size_gate  # noqa: E402 - build/ is not a package

ACTIONS = {"actions/checkout": "v4", "actions/setup-python": "v5", "actions/upload-artifact": "v4",
           "actions/download-artifact": "v4"}
# What each runner image has, or what the steps before install (setup-python: python; pip: pyinstaller).
COMMON = {"python", "pyinstaller", "gh", "mkdir", "cp", "ls", "echo", "cat", "tar", "cd", "true"}
COMMANDS = {
    "Linux": COMMON | {"sudo", "apt-get", "systemctl", "install", "journalctl", "sha256sum"},
    "macOS": COMMON | {"sudo"},
    "Windows": COMMON,  # Git Bash's coreutils
}
POWERSHELL = {"Get-WinEvent", "Get-Content", "Format-List"}
KEYWORDS = {"if", "then", "else", "elif", "fi", "for", "do", "done", "while", "[", "test"}


def _workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def _os_of(runner: str) -> str:
    return {"ubuntu": "Linux", "macos": "macOS", "windows": "Windows"}[runner.split("-")[0]]


def _applies(step: dict[str, Any], os_name: str) -> bool:
    condition = str(step.get("if", ""))
    named = re.findall(r"runner\.os (==|!=) '(\w+)'", condition)
    return all((os_name == value) == (op == "==") for op, value in named)


def _commands(script: str) -> list[str]:
    """The command names a bash script runs (enough for the plain scripts this workflow keeps)."""
    found = []
    text = re.sub(r"\$\{\{.*?\}\}", "X", script).replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|\|\||;|\|(?!\|)", line):
            words = shlex.split(part.strip(), posix=True) if part.strip() else []
            while words and (words[0] in KEYWORDS or re.fullmatch(r"\w+=.*", words[0])):
                if words[0] in ("[", "test"):  # a condition, not a command
                    words = []
                    break
                words = words[1:]
            while words and words[0] == "sudo":
                found.append("sudo")
                words = words[1:]
            if not words:
                continue
            command = words[0]
            inner = re.fullmatch(r"\$\(command -v (\w[\w-]*)\)", command)
            found.append(inner.group(1) if inner else command)
    return found


def _steps(only_runner: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(job, OS, step) for each step and each runner its job runs on."""
    workflow = _workflow()
    found = []
    for name, job in workflow["jobs"].items():
        matrix = job.get("strategy", {}).get("matrix", {}).get("include", [])
        runners = [entry["os"] for entry in matrix] or [job["runs-on"]]
        for runner in runners:
            if only_runner is not None and runner != only_runner:
                continue
            os_name = _os_of(runner)
            found += [(name, os_name, step) for step in job["steps"] if _applies(step, os_name)]
    return found


def test_jobs_and_runners() -> None:
    workflow = _workflow()
    assert set(workflow[True]) >= {"push", "workflow_dispatch"}  # YAML 1.1 reads `on` as True
    assert workflow[True]["push"]["tags"] == ["v*"]
    build = workflow["jobs"]["build"]
    assert [e["os"] for e in build["strategy"]["matrix"]["include"]] == [
        "ubuntu-24.04", "ubuntu-24.04-arm", "macos-latest", "windows-latest"]
    publish = workflow["jobs"]["publish"]
    assert publish["needs"] == "build" and publish["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert publish["permissions"] == {"contents": "write"} and workflow["permissions"] == {"contents": "read"}
    names = [step.get("name", "") for step in build["steps"]]
    for wanted in ("Unit tests", "Build the executable", "Smoke test", "Size gate"):
        assert any(n.startswith(wanted) for n in names), wanted
    assert sum(n.startswith("Service install/start/stop/uninstall") for n in names) == 3
    assert "TODO(issue 15)" in WORKFLOW.read_text() and "scrub" in WORKFLOW.read_text()


def test_actions_are_pinned_to_current_major_versions() -> None:
    for _, _, step in _steps():
        if "uses" in step:
            action, _, version = step["uses"].partition("@")
            assert ACTIONS.get(action) == version, step["uses"]


def test_run_steps_are_valid_shell_using_commands_the_runner_has() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    for job, os_name, step in _steps():
        if "run" not in step:
            continue
        script = step["run"]
        if step.get("shell") == "pwsh":
            assert os_name == "Windows", step.get("name")
            used = {line.split()[0] for line in script.splitlines() if line.strip()}
            assert used <= POWERSHELL, (step.get("name"), used - POWERSHELL)
            continue
        checked = subprocess.run([bash, "-n"], input=re.sub(r"\$\{\{.*?\}\}", "X", script), text=True,
                                 capture_output=True, check=False)
        assert checked.returncode == 0, (job, step.get("name"), checked.stderr)
        unknown = set(_commands(script)) - COMMANDS[os_name]
        assert not unknown, (job, os_name, step.get("name"), unknown)


def test_files_and_tests_it_names_exist() -> None:
    text = WORKFLOW.read_text()
    named = set(re.findall(r"(?:build|tests)/[\w/.-]+\.(?:py|spec)", text))
    assert {"build/smoke.py", "build/size_gate.py", "build/registry.spec", "tests/test_binary.py"} <= named
    for path in named:
        assert (REPO / path).is_file(), path
    for path in _workflow()["env"]["PORTABLE_TESTS"].split():
        assert (REPO / path).is_file(), path


def test_commands_found_in_scripts() -> None:
    assert _commands('sudo "$(command -v python)" build/smoke.py x --service') == ["sudo", "python"]
    assert _commands("if gh release download; then\n  python a.py\nelse\n  echo no\nfi") == [
        "gh", "python", "echo"]
    assert _commands('name="x-${GITHUB_REF_NAME}"\nls -l out | cat') == ["ls", "cat"]


def test_size_gate(tmp_path: Path) -> None:
    assert size_gate.check(30_000_000, None) == []
    assert size_gate.check(30_000_000, 28_600_000) == []  # +4.9 %
    assert "more than the last release" in size_gate.check(30_100_000, 28_600_000)[0]  # +5.2 %
    assert "ceiling" in size_gate.check(40_000_001, None)[0]
    executable = tmp_path / "registry"
    executable.write_bytes(b"x" * 1000)
    archive = tmp_path / "registry-v1-linux-x64.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(executable, arcname="registry")
    assert size_gate.asset_size(archive) == 1000
    assert size_gate.main([str(executable), str(archive)]) == 0
    executable.write_bytes(b"x" * 1100)
    assert size_gate.main([str(executable), str(archive)]) == 1


@pytest.mark.parametrize("runner", ["ubuntu-24.04", "ubuntu-24.04-arm", "macos-latest", "windows-latest"])
def test_every_runner_runs_unit_tests_build_smoke_and_service(runner: str) -> None:
    names = [step.get("name", "") for job, _, step in _steps(runner) if job == "build"]
    assert any(n.startswith("Unit tests") for n in names)
    assert "Build the executable" in names
    assert any(n.startswith("Smoke test") for n in names)
    assert sum(n.startswith("Service install/start/stop/uninstall") for n in names) == 1
