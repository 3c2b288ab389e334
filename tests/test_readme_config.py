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


def test_the_example_file_passes_check_config_and_the_reference_names_every_key() -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).parent.parent
    env = {k: v for k, v in os.environ.items() if k != "CONSUL_HTTP_ADDR"}
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "check-config", "--config", str(root / "upstream-bot.example.yml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr
    reference = (root / "docs" / "configuration.md").read_text()
    example = yaml.safe_load((root / "upstream-bot.example.yml").read_text())

    def keys(tree: object, path: str = "") -> list[str]:
        if not isinstance(tree, dict) or path.endswith(("steps", "hosts", "apps")):
            return [path] if path else []
        return [k for key, value in tree.items() for k in keys(value, f"{path}.{key}" if path else str(key))]

    for key in keys(example):
        last = key.split(".")[-1]
        named = (f"`{last}`", f".{last}`", f"`{last}.")
        assert any(n in reference for n in named), f"{key} is not in docs/configuration.md"
