"""Profile this machine and write device_config.json: the same as `liteinfer profile`.

    python hw_profiler.py [-o device_config.json] [--quick]
    python app.py --config device_config.json
"""

from __future__ import annotations

import sys

from liteinfer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["profile", *sys.argv[1:]]))
