"""`python -m runtime ...`: one function instance. See `runtime/main.py`."""

from __future__ import annotations

import sys

from runtime.config import parse_args
from runtime.main import run

if __name__ == "__main__":
    sys.exit(run(parse_args()))
