"""Optional API keys: --api-key flag(s), LITEINFER_API_KEY env (comma-separated), a key file
(one key a line). Bearer header, constant-time comparison."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from liteinfer.core.errors import LiteInferError


def load_api_keys(flags: list[str] | None = None, key_file: str | None = None,
                  configured: list[str] | None = None) -> list[str]:
    keys = list(configured or []) + list(flags or [])
    env = os.environ.get("LITEINFER_API_KEY", "")
    keys += [k.strip() for k in env.split(",") if k.strip()]
    if key_file:
        try:
            lines = Path(key_file).read_text().splitlines()
        except OSError as e:
            raise LiteInferError(f"cannot read API key file {key_file}: {e.strerror}") from None
        keys += [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    return keys


def check_bearer(header: str | None, keys: list[str]) -> bool:
    if not keys:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    given = header[len("Bearer "):].strip().encode()
    ok = False
    for k in keys:  # compare against every key so timing does not reveal which one matched
        ok |= hmac.compare_digest(given, k.encode())
    return ok
