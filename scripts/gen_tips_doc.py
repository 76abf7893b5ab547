"""Write docs/tips.md from the tip base (liteinfer/profile/tips/*.json).

    python scripts/gen_tips_doc.py          # rewrite docs/tips.md
    python scripts/gen_tips_doc.py --check  # exit 1 when docs/tips.md is out of date

tests/test_tips.py runs the check, so the manual and the advisor never disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from liteinfer.profile.tips import load_tips, render_markdown  # noqa: E402

DOC = ROOT / "docs" / "tips.md"


def main(argv: list[str]) -> int:
    text = render_markdown(load_tips())
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is out of date: run python scripts/gen_tips_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(DOC.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
