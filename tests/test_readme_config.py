"""The README's config reference is a file the bot accepts: every key it documents exists."""

from __future__ import annotations

from pathlib import Path

import yaml

from bot.config import parse_config


def test_the_readme_config_reference_is_valid() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Config\n") :]
    block = section[section.index("```yaml\n") + len("```yaml\n") : section.index("```\n", section.index("```yaml"))]
    config = parse_config(yaml.safe_load(block), {})
    app = config.apps["app"]
    assert config.slack.channels == ("C0DEPLOY", "C0OPS") and config.history.keep == 1000
    assert app.operators == ("U1ALICE", "S0OPS") and app.networks == ("10.0.0.0/8",)
    assert set(app.release.steps) == {"stop", "deploy", "start"}
