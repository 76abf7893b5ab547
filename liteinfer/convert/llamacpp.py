"""Hugging Face folder -> GGUF with llama.cpp's own converter (convert_hf_to_gguf.py).

Qwen2/2.5, Qwen3, Gemma 2/3, Phi-3/4, GPT-2 (and Llama/Mistral variants our numpy converter
in hf.py does not take: rope scaling, biases) go through the converter that ships with the
llama.cpp sources vendored in the llama-cpp-python sdist, the same version as the library we
link, so the GGUF it writes is the one that library reads.

Where the converter comes from: `$LITEINFER_LLAMA_CPP_SRC` (a llama.cpp checkout), else
`${XDG_CACHE_HOME:-~/.cache}/liteinfer/llama.cpp/<version>/`, filled once from the pinned
sdist (`pip download --no-binary :all: llama-cpp-python==<installed version>`, like
scripts/build_llama_tools.sh), keeping only convert_hf_to_gguf.py, conversion/ and gguf-py/.

The `gguf` package: the converter runs with the gguf-py vendored beside it, not PyPI's
`gguf` (PyPI 0.19.0 carries the same version number as llama.cpp's gguf-py but lags its
architecture and tensor tables), so it runs in a child process (convert/llamacpp_child.py)
where that gguf-py comes first on sys.path, away from the `gguf` the rest of liteinfer imports.

It needs torch and transformers (the converter is written on them): `pip install
'liteinfer[convert-hf]'`. Conversion is tooling; nothing at run time imports either.

The pre-tokenizer: llama.cpp names it from a hash of token ids, which a retrained vocabulary
never matches; the child then falls back to our detection from tokenizer.json's structure
(hf.detect_pre_tokenizer), and `--pre` overrides both.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_output

# architecture (config.json "architectures") -> family name; tests convert a tiny model of each
FAMILIES = {
    "LlamaForCausalLM": "Llama", "MistralForCausalLM": "Mistral",
    "Qwen2ForCausalLM": "Qwen2/2.5", "Qwen3ForCausalLM": "Qwen3",
    "Gemma2ForCausalLM": "Gemma 2", "Gemma3ForCausalLM": "Gemma 3",
    "Phi3ForCausalLM": "Phi-3/4", "GPT2LMHeadModel": "GPT-2",
}
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")


def supported_text() -> str:
    return ", ".join(f"{fam} ({arch})" for arch, fam in FAMILIES.items())


def llama_cpp_version() -> str:
    # on use: importlib.metadata walks site-packages (start-up)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        raise LiteInferError("llama-cpp-python is not installed (it provides the llama.cpp converter)") from None


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "liteinfer" / "llama.cpp"


def _fetch_sources(dest: Path, ver: str) -> None:
    """Download the pinned sdist and keep the converter's files under dest (atomically)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch.") as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            "-d", tmp, f"llama-cpp-python=={ver}"], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if r.returncode != 0 or not sdists:
            last = (r.stderr.strip().splitlines() or ["no sdist"])[-1]
            raise LiteInferError(f"could not fetch llama.cpp's converter (pip download llama-cpp-python=={ver} "
                                 f"sdist: {last}); set LITEINFER_LLAMA_CPP_SRC to a llama.cpp checkout")
        out = Path(tmp) / "src"
        with tarfile.open(sdists[0]) as tar:
            for m in tar.getmembers():
                parts = m.name.split("/vendor/llama.cpp/", 1)
                if len(parts) == 2 and parts[1].startswith(KEEP) and (m.isfile() or m.isdir()):
                    m.name = parts[1]
                    tar.extract(m, out, filter="data")
        if not (out / "convert_hf_to_gguf.py").is_file():
            raise LiteInferError(f"{sdists[0].name}: no vendor/llama.cpp/convert_hf_to_gguf.py in the sdist")
        (out / "VERSION").write_text(ver + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)


def converter_source() -> Path:
    """The llama.cpp folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/."""
    env = os.environ.get("LITEINFER_LLAMA_CPP_SRC")
    if env:
        src = Path(env)
        if not (src / "convert_hf_to_gguf.py").is_file():
            raise LiteInferError(f"LITEINFER_LLAMA_CPP_SRC={env}: no convert_hf_to_gguf.py there")
        return src
    ver = llama_cpp_version()
    dest = cache_root() / ver
    if not (dest / "convert_hf_to_gguf.py").is_file():
        print(f"fetching llama.cpp's converter (llama-cpp-python {ver} sdist) into {dest}", file=sys.stderr)
        _fetch_sources(dest, ver)
    return dest


def check_requirements(arch: str) -> None:
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise LiteInferError(f"converting {FAMILIES.get(arch, arch)} uses llama.cpp's converter, which needs "
                             f"{' and '.join(missing)}: pip install 'liteinfer[convert-hf]'")


def convert_llamacpp(folder: Path, out: Path, arch: str, outtype: str = "f32", pre: str | None = None,
                     progress: bool = True) -> Path:
    """Run llama.cpp's converter on folder in a child process; one-line error on failure."""
    check_requirements(arch)
    src = converter_source()
    with atomic_output(out) as tmp:
        cmd = [sys.executable, "-m", "liteinfer.convert.llamacpp_child", str(src), pre or "",
               str(folder), "--outfile", str(tmp), "--outtype", outtype]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if progress and r.stderr.strip():
            sys.stderr.write(r.stderr)
        if r.returncode != 0:
            lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
            errs = [ln for ln in lines if ln.startswith("error:")]
            msg = (errs or lines or [f"exit status {r.returncode}"])[-1].removeprefix("error:").strip()
            raise LiteInferError(f"{folder}: llama.cpp's converter failed: {msg}")
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise LiteInferError(f"{folder}: llama.cpp's converter wrote nothing")
    return out
