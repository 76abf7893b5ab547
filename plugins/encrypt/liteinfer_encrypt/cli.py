"""`liteinfer encrypt` and `liteinfer decrypt` (registered through the plugin API).

    liteinfer encrypt MODEL OUT.lienc --key-file K [--new-key] [--chunk-mb 4]
    liteinfer decrypt IN.lienc OUT --key-file K     (or the key from the environment)

MODEL is a .gguf or .onnx file or a catalog name (`smollm2-135m`). Both write their output
atomically (liteinfer.core.files): a failure leaves no output behind. `decrypt` authenticates
the whole model in memory before the first clear byte reaches the disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from liteinfer.core.errors import LiteInferError


def encrypt_main(args: argparse.Namespace) -> int:
    # on use: cryptography and the catalog load with the command (start-up time of every command)
    from liteinfer.core.catalog import pull
    from liteinfer.core.files import atomic_output
    from liteinfer_encrypt.fmt import encrypt_file, new_key, read_key_file

    src = pull(args.model, install=False)
    if src.is_dir():
        raise LiteInferError(f"{src} is a folder: encrypt takes one .gguf or .onnx file")
    out = Path(args.out)
    if out.exists() and out.resolve() == src.resolve():
        raise LiteInferError("OUT is the model itself: write the encrypted copy elsewhere")
    if args.new_key:
        key = new_key(args.key_file)
        print(f"new key written to {args.key_file} (mode 600): keep it apart from the model", file=sys.stderr)
    else:
        key, warning = read_key_file(args.key_file)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    need = src.stat().st_size + (src.stat().st_size >> 10) + 4096
    with atomic_output(out, need_bytes=need) as tmp, open(tmp, "wb") as f:
        header = encrypt_file(src, f, key, chunk=int(args.chunk_mb * (1 << 20)))
    print(f"{out}: {header.format} model, {header.size} bytes in {header.n_chunks} chunks of "
          f"{header.chunk >> 10} KiB (AES-256-GCM)")
    return 0


def decrypt_main(args: argparse.Namespace) -> int:
    # on use: cryptography with the command (start-up time of every command)
    from liteinfer.core.files import atomic_output
    from liteinfer_encrypt.fmt import decrypt_to_memfd
    from liteinfer_encrypt.loader import find_key

    src = Path(args.src)
    if Path(args.out).exists() and Path(args.out).resolve() == src.resolve():
        raise LiteInferError("OUT is the encrypted file itself: write the clear model elsewhere")
    fd, header = decrypt_to_memfd(src, find_key(args.key_file))  # every chunk authenticated first
    try:
        with atomic_output(args.out, need_bytes=header.size) as tmp, open(tmp, "wb") as f:
            with os.fdopen(os.dup(fd), "rb") as clear:
                shutil.copyfileobj(clear, f, 1 << 22)
    finally:
        os.close(fd)
    print(f"{args.out}: {header.format} model, {header.size} bytes")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encrypt", help="encrypt a GGUF or ONNX model (AES-256-GCM) for serving from memory only")
    p.add_argument("model", help=".gguf or .onnx file, or a catalog name")
    p.add_argument("out", help="the encrypted file (.lienc)")
    p.add_argument("--key-file", required=True, help="the key (64 hex digits); with --new-key, where to write one")
    p.add_argument("--new-key", action="store_true", help="make a new random key and write it to --key-file")
    p.add_argument("--chunk-mb", type=float, default=4.0, help="clear MiB per authenticated chunk (default 4)")
    p.set_defaults(func=encrypt_main)

    p = sub.add_parser("decrypt", help="decrypt a .lienc model back to its clear file")
    p.add_argument("src", help="the encrypted file (.lienc)")
    p.add_argument("out", help="where the clear model goes")
    p.add_argument("--key-file", default=None,
                   help="the key file (default: LITEINFER_MODEL_KEY / LITEINFER_MODEL_KEY_FILE)")
    p.set_defaults(func=decrypt_main)
