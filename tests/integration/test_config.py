"""`watchllm check-config` on valid and broken config files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from harness import PRICING_SOURCE, base_environment

BROKEN_CONFIG = {
    "listen": "nowhere",
    "threads": 0,
    "log_format": "xml",
    "providers": {
        "mock": {"base_url": "http://127.0.0.1:9/v1"},
        "bad": {"base_url": "ftp://127.0.0.1/v1", "read_timeout_ms": 0},
    },
    "models": {
        "gpt-4o-mini": {"provider": "missing"},
        "unpriced-model": {"provider": "mock"},
    },
}

# Each problem above, as the path that check-config names.
EXPECTED_PATHS = [
    "listen",
    "threads",
    "log_format",
    "providers.bad.base_url",
    "providers.bad.read_timeout_ms",
    "models.gpt-4o-mini.provider",
    "models.unpriced-model",
]


def run_check_config(binary: Path, config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), "check-config", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=base_environment(),
        cwd=config_path.parent,
    )


def write_config(directory: Path, config: dict) -> Path:
    shutil.copyfile(PRICING_SOURCE, directory / "pricing.yaml")
    path = directory / "watchllm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_check_config_broken(watchllm_binary: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, BROKEN_CONFIG)

    completed = run_check_config(watchllm_binary, config_path)
    problem_lines = [line for line in completed.stderr.splitlines() if line.startswith("  ")]
    reported_paths = [line.strip().split(": ", 1)[0] for line in problem_lines]

    assert completed.returncode == 2, completed.stderr
    for path in EXPECTED_PATHS:
        assert path in reported_paths, f"check-config did not report {path}:\n{completed.stderr}"
    assert len(problem_lines) == len(EXPECTED_PATHS), completed.stderr
    for line in problem_lines:
        assert line.strip().split(": ", 1)[1], f"problem without a message: {line!r}"


def test_check_config_unknown_key(watchllm_binary: Path, tmp_path: Path) -> None:
    config = {"providers": {"mock": {"base_url": "http://127.0.0.1:9/v1", "colour": "red"}}}
    config_path = write_config(tmp_path, config)

    completed = run_check_config(watchllm_binary, config_path)

    problem_lines = [line for line in completed.stderr.splitlines() if line.startswith("  ")]

    assert completed.returncode == 2
    assert len(problem_lines) == 1, completed.stderr
    assert problem_lines[0].startswith("  providers.mock"), completed.stderr
    assert "colour" in problem_lines[0]
    assert "line 4" in problem_lines[0]


def test_check_config_valid(watchllm_binary: Path, tmp_path: Path) -> None:
    config = {
        "listen": "127.0.0.1:18080",
        "admin_listen": "127.0.0.1:18081",
        "providers": {"mock": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"gpt-4o-mini": {"provider": "mock"}, "gpt-4o": {"provider": "mock"}},
    }
    config_path = write_config(tmp_path, config)

    completed = run_check_config(watchllm_binary, config_path)

    assert completed.returncode == 0, completed.stderr
    assert "is valid" in completed.stdout


def test_repository_config_valid(watchllm_binary: Path) -> None:
    completed = run_check_config(watchllm_binary, PRICING_SOURCE.parent / "watchllm.yaml")

    assert completed.returncode == 0, completed.stderr
