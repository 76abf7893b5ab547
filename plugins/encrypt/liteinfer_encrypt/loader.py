"""Loading .lienc models into liteinfer's engines, the clear bytes in memory only.

The model is decrypted into a memfd (an anonymous memory file); llama.cpp opens it as
/proc/self/fd/N and maps it like any GGUF, ONNX Runtime reads it the same way. The key comes,
first found, from:
    LITEINFER_MODEL_KEY        the key itself (64 hex digits)
    LITEINFER_MODEL_KEY_FILE   a file holding it (systemd's LoadCredential= gives one)
    plugins.encrypt.key_file   in device_config.json
Keys are never logged or shown in an error; only the file they came from is named.

The Q4_1 split (liteinfer/engines/q4_1_split.py) caches a Q4_0 copy of the weights on disk,
in clear: an encrypted model is served without it (llama.cpp's Q4_1 kernels).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from liteinfer.core.errors import LiteInferError
from liteinfer.core.plugins import settings as plugin_settings
from liteinfer.engines.llama import LlamaEngine
from liteinfer.engines.onnx import load_model
from liteinfer_encrypt.fmt import Header, decrypt_to_memfd, parse_key, peek, read_key_file

log = logging.getLogger("liteinfer.encrypt")
KEY_ENV = "LITEINFER_MODEL_KEY"
KEY_FILE_ENV = "LITEINFER_MODEL_KEY_FILE"


def find_key(key_file: str | None = None, config=None) -> bytes:
    """The model key: `key_file` when given, else the environment, else the config's key_file."""
    if key_file is None:
        if os.environ.get(KEY_ENV):
            return parse_key(os.environ[KEY_ENV].encode(), KEY_ENV)
        key_file = os.environ.get(KEY_FILE_ENV) or None
        if key_file is None and config is not None:
            key_file = plugin_settings(config, "encrypt").key_file
    if key_file is None:
        raise LiteInferError(f"the model is encrypted: give its key with {KEY_FILE_ENV}=PATH, {KEY_ENV}=HEX "
                             "or plugins.encrypt.key_file in the config")
    key, warning = read_key_file(key_file)
    if warning:
        log.warning("%s", warning)
    return key


def _want(header: Header, src: Path, fmt: str) -> None:
    if header.format != fmt:
        what = {"gguf": "a GGUF chat model", "onnx": "an ONNX embedding or classifier model"}
        raise LiteInferError(f"{src} holds {what[header.format]}, not {what[fmt]}")


def check(path: Path, kind: str, config) -> None:
    """Before the port is bound: the key is there, opens the header, and the model is of `kind`."""
    _want(peek(path, find_key(config=config)), path, "gguf" if kind == "llm" else "onnx")


class MemfdLlamaEngine(LlamaEngine):
    """A LlamaEngine on a memfd: `path` is /proc/self/fd/N (the header stays readable there for
    /api/show), `source` the encrypted file; the memfd closes with the engine."""

    def __init__(self, fd: int, source: Path, settings):
        self.fd, self.source = fd, source
        super().__init__(f"/proc/self/fd/{fd}", settings)

    def close(self) -> None:
        super().close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _settings(config):
    return plugin_settings(config, "encrypt") if config is not None else None


def protect_process() -> bool:
    """PR_SET_DUMPABLE 0: no core dump (it would hold the clear weights), and /proc/PID/{mem,fd,
    maps,...} of this process become root's, so the same user's other processes can neither read
    its memory nor open its memfd; the process itself still opens /proc/self/fd/N. Linux only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        return False


def _decrypt(path: Path, config) -> tuple[int, Header]:
    s = _settings(config)
    if (s is None or s.protect_process) and protect_process():
        log.info("process made non-dumpable (plugins.encrypt.protect_process)")
    return decrypt_to_memfd(path, find_key(config=config), bool(s.verify_hash) if s is not None else True)


def load_llm(path: Path, settings, config) -> LlamaEngine:
    fd, header = _decrypt(path, config)
    try:
        _want(header, path, "gguf")
        # the split would write a Q4_0 copy of the weights to the cache: clear weights on disk
        engine = MemfdLlamaEngine(fd, path, settings.model_copy(update={"split_q4_1": False}))
    except BaseException:
        os.close(fd)
        raise
    log.info("decrypted %s into memory (%d bytes, memfd)", path.name, header.size)
    return engine


def load_oneshot(path: Path, settings, config):
    fd, header = _decrypt(path, config)
    try:
        _want(header, path, "onnx")
        model = load_model(f"/proc/self/fd/{fd}", settings)  # ORT parses it into its own memory
    finally:
        os.close(fd)
    model.path = path  # names and /api/show: the file the user gave
    log.info("decrypted %s into memory (%d bytes)", path.name, header.size)
    return model
