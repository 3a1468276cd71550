"""The placeholder home page renders the demo world's numbers (Streamlit AppTest, no browser)."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.world import WorldConfig, build_world

pytestmark = pytest.mark.integration
APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_home_page_shows_world_metrics():
    world = build_world(WorldConfig())
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert labels.count("Harmful rate") == 2 and labels.count("Task exact-match") == 2
    shown = [m.value for m in at.metric if m.label == "Harmful rate"]
    assert shown[1] == f"{world.info['metrics']['finetuned']['harmful_rate']:.1f}%"
