"""The README's config reference is a file the bot accepts: every key it documents exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot.config import ConfigError, parse_config


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


ROOT = Path(__file__).parent.parent


def schema_problems(value: object) -> list[str]:
    """What an editor checks with docs/upstream-bot.schema.json: every key known, every required key there,
    each name (propertyNames) and value of a type (and pattern, or choice, or range) the schema allows."""
    import json
    import re

    schema = json.loads((ROOT / "docs" / "upstream-bot.schema.json").read_text())
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
            if not number or (kind == "integer" and not isinstance(value, int)):
                return False
            low, high = node.get("minimum", value), node.get("maximum", value)
            return low <= value <= high and value > node.get("exclusiveMinimum", value - 1)  # type: ignore[operator]
        if kind is not None and not isinstance(value, types[kind]):
            return False
        if "enum" in node and value not in node["enum"]:
            return False
        if "not" in node and fits(value, node["not"]):
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
                if "propertyNames" in node and not fits(str(key), node["propertyNames"]):
                    out.append(f"{path}.{key}: not a name the schema allows")
                elif key in node.get("properties", {}):
                    out += problems(item, node["properties"][key], f"{path}.{key}")
                elif pattern is not None:
                    out += problems(item, node["patternProperties"][pattern], f"{path}.{key}")
                elif node.get("additionalProperties") is False:
                    out.append(f"{path}.{key}: unknown key")
                elif isinstance(node.get("additionalProperties"), dict):
                    out += problems(item, node["additionalProperties"], f"{path}.{key}")
        elif isinstance(value, list):
            out += [p for i, item in enumerate(value) for p in problems(item, node.get("items", {}), f"{path}[{i}]")]
        return out

    return problems(value, schema, "example")


def test_the_example_file_fits_the_published_schema() -> None:
    """(check-config accepts it: above.)"""
    example = yaml.safe_load((ROOT / "upstream-bot.example.yml").read_text())
    assert schema_problems(example) == []
    example["apps"]["app"]["health"]["helth"] = 1  # the check itself catches what an editor would
    example["apps"]["app"]["release"]["steps"]["stop"] = {"timeout": "1s"}
    assert schema_problems(example) == [
        "example.apps.app.health.helth: unknown key",
        "example.apps.app.release.steps.stop.run: required",
    ]


# Files check-config takes: a null section or key takes its default, and an editor must not flag it.
NULLS = [
    {"consul": None, "slack": None, "access": None, "history": None, "ssh": None, "agent": None, "apps": None},
    {"consul": {"addresses": None, "prefix": None, "timeout": None, "session_ttl": None}},
    {"ssh": {"user": None, "port": None, "connect_timeout": None, "hosts": {"10.0.0.5": None}}},
    {"apps": {"app": None}},
    {"apps": {"app": {"nginx": None, "health": None, "release": None, "ssh": None, "watch": None}}},
    {"apps": {"app": {"upstream": None, "approvers": None, "approval": None, "networks": None}}},
    {"apps": {"app": {"health": {"interval": None, "source": None}, "release": {"steps": None}}}},
    {"apps": {"app": {"release": {"steps": {"stop": {"run": "x", "timeout": None}}}}}},
]


@pytest.mark.parametrize("config", NULLS)
def test_what_check_config_takes_an_editor_does_not_flag(config: dict) -> None:
    parse_config(config, {})
    assert schema_problems(config) == []


# (a file check-config refuses, what an editor flags in it)
FLAGGED = [
    ({"apps": {"my app": {}}}, "example.apps.my app: not a name the schema allows"),
    ({"apps": {"watch": {}}}, "example.apps.watch: not a name the schema allows"),
    ({"apps": {"app": {"release": {"steps": {"Stop": "x"}}}}}, "example.apps.app.release.steps.Stop: not a name"),
    ({"apps": {"app": {"upstream": ".."}}}, "example.apps.app.upstream: '..' is of no type the schema allows"),
    ({"consul": {"prefix": "upstreams/../x"}}, "example.consul.prefix: 'upstreams/../x' is of no type"),
    ({"consul": {"timeout": 0}}, "example.consul.timeout: 0 is of no type the schema allows"),
    ({"consul": {"timeout": "0s"}}, "example.consul.timeout: '0s' is of no type the schema allows"),
    ({"consul": {"session_ttl": 5}}, "example.consul.session_ttl: 5 is of no type the schema allows"),
    ({"apps": {"app": {"health": {"timeout": "0ms"}}}}, "example.apps.app.health.timeout: '0ms' is of no type"),
    ({"apps": {"app": {"release": {"steps": {"stop": None}}}}}, "example.apps.app.release.steps.stop: None is"),
]


@pytest.mark.parametrize(("config", "flagged"), FLAGGED)
def test_an_editor_flags_what_check_config_refuses(config: dict, flagged: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(config, {})
    assert [p for p in schema_problems(config) if p.startswith(flagged)], schema_problems(config)


def test_a_description_is_never_beside_a_ref() -> None:
    """Draft 7 ignores every keyword beside `$ref`: an editor would show no description."""
    import json

    def refs(node: object) -> list[dict]:
        if isinstance(node, list):
            return [r for item in node for r in refs(item)]
        if not isinstance(node, dict):
            return []
        return ([node] if "$ref" in node else []) + [r for item in node.values() for r in refs(item)]

    schema = json.loads((ROOT / "docs" / "upstream-bot.schema.json").read_text())
    assert refs(schema) and all(set(ref) == {"$ref"} for ref in refs(schema))


def test_the_reference_names_only_keys_the_file_takes() -> None:
    """`consul.token` (say) in docs/configuration.md or in a message would send someone to an unknown key."""
    import re

    from bot.config_models import App, ConfigFile, Section

    def resolves(model: type, path: list[str]) -> bool:
        field = model.model_fields.get(path[0])
        if field is None or len(path) == 1:
            return field is not None
        inner = field.annotation
        return isinstance(inner, type) and issubclass(inner, Section) and resolves(inner, path[1:])

    reference = (ROOT / "docs" / "configuration.md").read_text()
    for name in set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", reference)):
        assert resolves(ConfigFile, name.split(".")) or resolves(App, name.split(".")), name
    (addresses,) = [line for line in reference.splitlines() if line.startswith("| `addresses` |")]
    assert "`CONSUL_HTTP_TOKEN`" in addresses and "`token`" not in addresses
