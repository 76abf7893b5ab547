"""Write a slim copy of a llama-cpp-python wheel: what `import llama_cpp` loads, nothing else.

    python scripts/slim_llama_wheel.py IN.whl OUT_DIR     -> OUT_DIR/<same name>.whl

The wheel scikit-build-core makes carries llama.cpp's CMake install twice: a top-level `lib/`
and `include/` nobody loads (llama_cpp loads from llama_cpp/lib, RUNPATH $ORIGIN), and in
llama_cpp/lib every library three times (libX.so, libX.so.0, libX.so.0.N.M: a wheel cannot
hold symlinks, so they are copies). Kept: the names Python opens (libllama.so, libggml.so,
libmtmd.so: llama_cpp/_ctypes_extensions.py loads lib{name}.so) and the sonames they need
(libllama.so.0, libggml.so.0, libggml-base.so.0, libggml-cpu.so.0, found by reading each
kept library's DT_NEEDED). 62 MB -> 13 MB installed for 0.3.36; the RECORD lists what stays.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

LOADED_BY_PYTHON = ("libllama.so", "libggml.so", "libmtmd.so")


def needed(data: bytes) -> set[str]:
    """DT_NEEDED-looking names in an ELF file (the sonames it asks the loader for)."""
    return {m.decode() for m in re.findall(rb"(lib[A-Za-z0-9_+\-]+\.so\.\d+)\x00", data)}


def slim(src: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
        libdir = "llama_cpp/lib/"
        libs = {n[len(libdir):]: n for n in names if n.startswith(libdir) and "/" not in n[len(libdir):]}
        keep_libs = {n for n in LOADED_BY_PYTHON if n in libs}
        todo = list(keep_libs)
        while todo:  # the sonames the kept libraries need, and theirs (not a library's own soname)
            name = todo.pop()
            own = name.split(".so")[0] + ".so."
            for so in needed(z.read(libs[name])):
                if so in libs and so not in keep_libs and not so.startswith(own):
                    keep_libs.add(so)
                    todo.append(so)
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))

        def kept(name: str) -> bool:
            top = name.split("/")[0]
            if top in ("lib", "include", "bin"):
                return False
            if name in libs.values():
                return name[len(libdir):] in keep_libs
            return True

        record = []
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            part = Path(tmp) / src.name
            with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as out:
                for info in z.infolist():
                    if not kept(info.filename) or info.filename == f"{dist_info}/RECORD":
                        continue
                    data = z.read(info)
                    out.writestr(info, data)
                    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                    record.append(f"{info.filename},sha256={digest},{len(data)}")
                record.append(f"{dist_info}/RECORD,,")
                out.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
            dest = out_dir / src.name
            shutil.move(part, dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.splitlines()[2].strip())
    print(slim(Path(sys.argv[1]), Path(sys.argv[2])))
