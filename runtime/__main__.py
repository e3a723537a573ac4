"""`python -m runtime ...`: one function instance. See `runtime/main.py`."""

from __future__ import annotations

import sys

from runtime.config import parse_args
from runtime.limits import close_inherited
from runtime.main import run

if __name__ == "__main__":
    config = parse_args()
    close_inherited(keep=config.status_fd)
    sys.exit(run(config))
