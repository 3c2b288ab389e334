import pytest

from commands.addresses import ServerAddress
from commands.errors import UsageError
from commands.grammar import parse, parse_line
from commands.requests import (
    AddRequest,
    DrainRequest,
    HelpRequest,
    ReleaseRequest,
    ReleaseResumeRequest,
    RemoveRequest,
    StatusRequest,
    UndrainRequest,
)


def test_commands_parse_into_typed_requests() -> None:
    assert parse("/upstream", "status app") == StatusRequest("app")
    assert parse("/upstream", "status app --page 3") == StatusRequest("app", 3)
    assert parse("/drain", "10.0.0.5:9000") == DrainRequest(ServerAddress("10.0.0.5", 9000))
    assert parse("/drain", "10.0.0.5:9000 app --force") == DrainRequest(ServerAddress("10.0.0.5", 9000), "app", True)
    assert parse("/undrain", "10.0.0.5:9000 --force") == UndrainRequest(ServerAddress("10.0.0.5", 9000), None, True)
    assert parse("/upstream", "add app 10.0.0.6:9000 weight=3") == AddRequest("app", ServerAddress("10.0.0.6", 9000), 3)
    assert parse("/upstream", "remove app 10.0.0.6:9000") == RemoveRequest("app", ServerAddress("10.0.0.6", 9000))
    assert parse_line("/release app --batch 25% --version 2.1") == ReleaseRequest(
        "app", batch_percent=25, version="2.1"
    )
    assert parse("/drain", "") == HelpRequest("/drain")
    assert parse("/release", "resume app") == ReleaseResumeRequest("app")
    assert parse("/release", "resume app --restore") == ReleaseResumeRequest("app", "restore")
    assert parse_line('/release resume app --leave --reason "checked by hand"') == ReleaseResumeRequest(
        "app", "leave", "checked by hand"
    )


@pytest.mark.parametrize(
    ("command", "text", "expected"),
    [
        ("/drain", "10.0.0.5", "expected IPv4:port"),
        ("/drain", "app.example.com:9000", "skips hostnames"),
        ("/drain", "[::1]:9000", "IPv6"),
        ("/drain", "10.0.0.5:70000", "from 1 to 65535"),
        ("/drain", "10.0.0.5:9000 --forse", "unknown flag `--forse`"),
        ("/drain", "10.0.0.5:9000 —force", "two hyphens"),
        ("/drain", "10.0.0.5:9000 app extra", "unexpected `extra`"),
        ("/upstream", "stats app", "unknown subcommand `stats`"),
        ("/upstream", "add app 10.0.0.6:9000 weight=0", "weight is a whole number from 1"),
        ("/upstream", "add app 10.0.0.6:9000 wieght=2", "only option is `weight=N`"),
        ("/release", "app --version=--delete-all", "starts with `-`"),
        ("/release", "app --version -x", "starts with `-`"),
        ("/release", "app --version=-x", "starts with `-`"),
        ("/release", "app --version ..", "names a folder"),
        ("/release", "app --version=.", "names a folder"),
        ("/release", "app --version ../../etc", "slash"),
        ("/release", "app --serial --batch 2", "exclude each other"),
        ("/release", "app --batch 0", "give a count"),
        ("/release", "resume app --restore --leave", "exclude each other"),
        ("/release", "resume app --retsore", "unknown flag `--retsore`"),
        ("/release", "resume app other", "unexpected `other`"),
        ("/release", "resume", "`/release resume` needs an app"),
        ("/release", "status", "`/release status` needs an app"),
    ],
)
def test_bad_input_says_what_is_wrong_and_what_is_right(command: str, text: str, expected: str) -> None:
    with pytest.raises(UsageError) as error:
        parse(command, text)
    assert expected in error.value.message


def test_a_line_without_slash_is_not_a_command() -> None:
    with pytest.raises(UsageError, match="commands start with"):
        parse_line("drain 10.0.0.5:9000")


def test_an_apps_version_pattern_replaces_the_default_but_never_admits_options_or_folders() -> None:
    from commands.steps import StepRefused, StepTarget, validate_target

    semver = r"^[0-9]+\.[0-9]+\.[0-9]+(\+[a-z0-9.]+)?$"
    assert validate_target(StepTarget("app", "10.0.0.5", 9000, "1.2.3+build.7"), semver, {"app"}).version
    with pytest.raises(StepRefused, match="does not match"):
        validate_target(StepTarget("app", "10.0.0.5", 9000, "1.2"), semver, {"app"})
    anything = r".*"  # a careless pattern still cannot let these through to a step
    for bad in ("--delete-all", "-x", ".", "..", "../x", "1 2", "1\n2"):
        with pytest.raises(StepRefused, match="version refused"):
            validate_target(StepTarget("app", "10.0.0.5", 9000, bad), anything, {"app"})


def test_a_reason_and_a_version_cannot_carry_slack_markup() -> None:
    reason = parse_line('/drain 10.0.0.5:9000 --reason "<!channel> approve at <https://evil.example|SSO>"').reason
    assert reason is not None and "<" not in reason and ">" not in reason and "!channel" in reason
    for version in ("<!channel>", "$(id)", "1;id", "a|b", "1'x"):
        with pytest.raises(UsageError, match="letters, digits and"):
            parse_line(f"/release app --version={version}")


def test_help_alone_is_a_command_in_the_terminal() -> None:
    from commands.requests import HelpRequest

    for line in ("help", " HELP ", "?", "/help"):
        assert parse_line(line) == HelpRequest("")


def test_answers_that_say_the_right_thing() -> None:
    import pytest

    with pytest.raises(UsageError) as error:
        parse_line("/drain 999.1.1.1:80")
    assert "hostname" not in error.value.message and "0 to 255" in error.value.message
    long_name = "a" * 3000
    with pytest.raises(UsageError) as error:
        parse_line(f"/upstream status {long_name}")
    assert long_name not in error.value.message and "3000 characters" in error.value.message
    from commands.grammar import usage

    assert "--force" in usage("/release")
