"""liteinfer-encrypt: models that cannot be copied in clear, built only on liteinfer's plugin API.

    liteinfer encrypt smollm2-135m smollm2.lienc --key-file model.key --new-key
    LITEINFER_MODEL_KEY_FILE=model.key liteinfer serve -m smollm2.lienc
    liteinfer decrypt smollm2.lienc smollm2.gguf --key-file model.key

What it registers (liteinfer.core.plugins): the `encrypt` and `decrypt` commands, the `.lienc`
file type for chat (GGUF) and one-shot (ONNX) models, and the `plugins.encrypt` config section
(key_file). The file format is fmt.py, the loaders loader.py; docs/security.md says what this
protects against and what it does not. This module stays light (every `liteinfer` command
imports it): cryptography and the engines load when a model or a command needs them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from liteinfer.core.plugins import EngineType, Plugin
from liteinfer_encrypt.cli import register

__version__ = "0.1.0"
SUFFIX = ".lienc"


class EncryptSettings(BaseModel):
    """device_config.json: "plugins": {"encrypt": {"key_file": "/etc/liteinfer/model.key"}}"""

    model_config = ConfigDict(extra="forbid")
    key_file: str | None = Field(None, description="file holding the model key (64 hex digits); "
                                 "LITEINFER_MODEL_KEY / LITEINFER_MODEL_KEY_FILE in the environment come first")
    # every chunk's GCM tag is checked, bound to its index and to the authenticated header (sizes,
    # count): the SHA-256 of the whole clear model adds nothing an attacker without the key could
    # defeat, and costs ~0.1-0.3 s per 100 MB at load. `decrypt` always checks it.
    verify_hash: bool = Field(False, description="also check the clear model's SHA-256 when serving")
    protect_process: bool = Field(True, description="make the process non-dumpable when it loads an encrypted "
                                  "model: no core dumps, and other processes of the same user cannot read its "
                                  "memory or open its memfd through /proc (root still can)")


# on use: cryptography, llama.cpp and ONNX Runtime load with an encrypted model (start-up time)
def _load_llm(path, settings, config):
    from liteinfer_encrypt.loader import load_llm

    return load_llm(path, settings, config)


def _load_oneshot(path, settings, config):
    from liteinfer_encrypt.loader import load_oneshot  # on use: as above (start-up time)

    return load_oneshot(path, settings, config)


def _check(path, kind, config):
    from liteinfer_encrypt.loader import check  # on use: as above (start-up time)

    check(path, kind, config)


plugin = Plugin(
    name="encrypt",
    description="AES-256-GCM encrypted GGUF / ONNX models, decrypted into memory only",
    commands=[register],
    engines=[EngineType(SUFFIX, "encrypted GGUF/ONNX", load_llm=_load_llm, load_oneshot=_load_oneshot,
                        check=_check)],
    config={"encrypt": EncryptSettings},
)
