"""The user documentation: the curl, Python and JavaScript examples of docs/API.md run against a
real gateway, and docs/CONFIG.md names every key of conf/watchllm.yaml.

The JavaScript examples need the `openai` npm package in .venv/node, which scripts/setup.sh
installs when npm is available; without it they are skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import REPO_ROOT, Gateway

API_DOC = REPO_ROOT / "docs" / "API.md"
CONFIG_DOC = REPO_ROOT / "docs" / "CONFIG.md"
CONFIG_FILE = REPO_ROOT / "conf" / "watchllm.yaml"
NODE_DIR = REPO_ROOT / ".venv" / "node"
ADMIN_TOKEN = "docs-admin-token-0123456789abcdef"
EXAMPLE_TIMEOUT_S = 60

# Maps whose keys are names the user chooses, so CONFIG.md documents their entries, not each name.
USER_NAMED_MAPS = {"providers", "models", "experiments", "limits.plans", "limits.projects", "cache.projects"}


def code_blocks(language: str) -> list[str]:
    """Return the fenced code blocks of docs/API.md whose info string is `language`."""
    return re.findall(rf"^```{language}\n(.*?)^```", API_DOC.read_text(), flags=re.MULTILINE | re.DOTALL)


def example_environment(gateway: Gateway) -> dict[str, str]:
    environment = gateway.environment()
    environment.update({
        "WATCHLLM_URL": gateway.base_url.removesuffix("/v1"),
        "WATCHLLM_KEY": gateway.key,
        "WATCHLLM_ADMIN_URL": gateway.admin_url,
        "WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN,
        "WATCHLLM_PROJECT": Gateway.PROJECT_NAME,
    })
    return environment


def run_example(command: list[str], source: str, environment: dict[str, str], cwd: Path) -> None:
    completed = subprocess.run(command, input=source, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S,
                               env=environment, cwd=cwd)
    assert completed.returncode == 0, f"example failed with exit code {completed.returncode}:\n{source}\n" \
                                      f"stdout:\n{completed.stdout[-2000:]}\nstderr:\n{completed.stderr[-2000:]}"


@pytest.fixture
def docs_gateway(gateway_factory) -> Gateway:
    gateway = gateway_factory(environment={"WATCHLLM_ADMIN_TOKEN": ADMIN_TOKEN})
    gateway.track(ADMIN_TOKEN)
    return gateway


def test_curl_examples_run(docs_gateway: Gateway, tmp_path: Path) -> None:
    examples = [block for block in code_blocks("sh") if "curl " in block]
    assert len(examples) >= 6
    for example in examples:
        run_example(["bash", "-euo", "pipefail"], example, example_environment(docs_gateway), tmp_path)


def test_python_examples_run(docs_gateway: Gateway, tmp_path: Path) -> None:
    examples = code_blocks("python")
    assert len(examples) >= 2
    for example in examples:
        run_example([sys.executable, "-"], example, example_environment(docs_gateway), tmp_path)


@pytest.mark.skipif(not (NODE_DIR / "node_modules" / "openai").is_dir() or shutil.which("node") is None,
                    reason="the openai npm package is not installed in .venv/node; scripts/setup.sh installs it")
def test_javascript_examples_run(docs_gateway: Gateway) -> None:
    examples = code_blocks("js")
    assert examples
    for number, example in enumerate(examples):
        # Node resolves `import "openai"` from the script's folder, so the script goes next to node_modules.
        script = NODE_DIR / f"api-example-{number}.mjs"
        script.write_text(example)
        try:
            run_example(["node", str(script)], "", example_environment(docs_gateway), NODE_DIR)
        finally:
            script.unlink()


def config_keys(node: Any, prefix: str = "") -> list[str]:
    """Return the dotted paths of every key in the config file, except inside user-named maps."""
    if not isinstance(node, dict):
        return []
    keys = []
    for name, value in node.items():
        path = f"{prefix}{name}"
        keys.append(path)
        if path not in USER_NAMED_MAPS:
            keys.extend(config_keys(value, path + "."))
    return keys


@pytest.mark.parametrize("backend", ["none"], indirect=False)
def test_config_doc_names_every_key(backend: str) -> None:
    documented = CONFIG_DOC.read_text()
    keys = config_keys(yaml.safe_load(CONFIG_FILE.read_text()))
    assert len(keys) > 30
    missing = [key for key in keys if f"`{key}`" not in documented]
    assert not missing, f"docs/CONFIG.md does not document these keys of conf/watchllm.yaml: {missing}"
