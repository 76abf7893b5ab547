"""Classic entry point: `python app.py --config device_config.json` serves the configured model.

Same as `liteinfer serve`; the config file comes from `python hw_profiler.py`.
"""

import sys

from liteinfer.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", *sys.argv[1:]]))
