"""A scheduled minimum through a real `nest up`: the window's instances start with no traffic, `nest describe`
says which window is open and until when, and a closed one says when it opens next."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

IDLE = """\
def handle(request):
    return "ok"
"""
# Every minute for two minutes: always open. 29 February at 03:00 in Auckland: closed, and it says when it opens.
MANIFEST = """\
scaling:
  max: 4
  schedules:
    - {cron: "* * * * *", timezone: Europe/Paris, duration: 2m, min: 2}
    - {cron: "0 3 29 2 *", timezone: Pacific/Auckland, duration: 1h, min: 4}
"""


def test_an_open_window_keeps_its_minimum_and_describe_shows_the_windows(platform: Platform) -> None:
    platform.deploy("scheduled", IDLE, MANIFEST)
    platform.wait_for(
        lambda: len(platform.describe("scheduled")["instances"]) == 2,  # type: ignore[arg-type]
        timeout_s=15,
        what="the scheduled minimum of 2 instances with no traffic",
    )
    decisions = platform.describe("scheduled")["scaling"]["decisions"]  # type: ignore[index]
    assert any("schedule: min 2" in decision["reason"] for decision in decisions), decisions
    shown = platform.cli("describe", "scheduled").stdout
    assert "scheduled minimums" in shown
    rows = {line.split()[0]: line for line in shown.splitlines() if line.strip().startswith(("*", "0 3"))}
    assert "open until" in rows["*"]
    assert "closed, opens 2028-02-2" in rows["0"], "the next 29 February, 03:00 in Auckland (UTC the day before)"
