#!/usr/bin/env bash
# The whole test suite. pytest exits 5 when it collected no test: that is a failure here
# only if tests/ has test files (a real "nothing ran" must not pass silently).
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check . || exit 1
.venv/bin/lint-imports || exit 1  # the layer contracts in pyproject.toml
.venv/bin/python -m pytest -q -ra "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit $rc
