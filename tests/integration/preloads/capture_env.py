"""A preload that keeps the environment it was imported under, as some libraries read configuration at import:
whatever it holds, every instance forked from its zygote holds too."""

import os

CAPTURED = dict(os.environ)
