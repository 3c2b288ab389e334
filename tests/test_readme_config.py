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


def test_the_example_file_fits_the_published_schema() -> None:
    """What an editor checks with docs/upstream-bot.schema.json: every key known, every required key there,
    each value of a type (and pattern, or choice) the schema allows. (check-config accepts it: above.)"""
    import json
    import re

    root = Path(__file__).parent.parent
    schema = json.loads((root / "docs" / "upstream-bot.schema.json").read_text())
    example = yaml.safe_load((root / "upstream-bot.example.yml").read_text())
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}

    def alternatives(node: dict) -> list[dict]:
        if "$ref" in node:
            return alternatives(schema["definitions"][node["$ref"].rsplit("/", 1)[1]])
        if "anyOf" in node or "oneOf" in node:
            return [alt for sub in node.get("anyOf", node.get("oneOf")) for alt in alternatives(sub)]
        return [node]

    def fits(value: object, node: dict) -> bool:
        kind = node.get("type")
        if kind in ("number", "integer"):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            return number and (kind == "number" or isinstance(value, int))
        if kind is not None and not isinstance(value, types[kind]):
            return False
        if "enum" in node and value not in node["enum"]:
            return False
        return not (isinstance(value, str) and "pattern" in node and not re.search(node["pattern"], value))

    def problems(value: object, node: dict, path: str) -> list[str]:
        found = [alt for alt in alternatives(node) if fits(value, alt)]
        if not found:
            return [f"{path}: {value!r} is of no type the schema allows"]
        node, out = found[0], []
        if isinstance(value, dict):
            out += [f"{path}.{key}: required" for key in node.get("required", []) if key not in value]
            for key, item in value.items():
                pattern = next((p for p in node.get("patternProperties", {}) if re.search(p, str(key))), None)
                if key in node.get("properties", {}):
                    out += problems(item, node["properties"][key], f"{path}.{key}")
                elif pattern is not None:
                    out += problems(item, node["patternProperties"][pattern], f"{path}.{key}")
                elif node.get("additionalProperties") is False:
                    out.append(f"{path}.{key}: unknown key")
        elif isinstance(value, list):
            out += [p for i, item in enumerate(value) for p in problems(item, node.get("items", {}), f"{path}[{i}]")]
        return out

    assert problems(example, schema, "example") == []
    example["apps"]["app"]["health"]["helth"] = 1  # the check itself catches what an editor would
    example["apps"]["app"]["release"]["steps"]["stop"] = {"timeout": "1s"}
    assert problems(example, schema, "example") == [
        "example.apps.app.health.helth: unknown key",
        "example.apps.app.release.steps.stop.run: required",
    ]
