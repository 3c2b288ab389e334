import pytest

from bot.nginx.status import NginxFormatError, parse_check_status_csv, parse_check_status_json, parse_upstream_show

CHECK_JSON_TRAILING_COMMA = """{"servers": {"total": 3, "generation": 3, "server": [
 {"index": 0, "upstream": "app", "name": "127.0.0.1:9000", "status": "up", "rise": 58, "fall": 0, "type": "http"},
 {"index": 1, "upstream": "app", "name": "127.0.0.1:9001", "status": "down", "rise": 0, "fall": 9, "type": "http"},
 {"index": 2, "upstream": "other", "name": "127.0.0.1:9000", "status": "down", "rise": 0, "fall": 9, "type": "http"},
  ]}}"""

UPSTREAM_SHOW = """Upstream name: app; Backend server count: 2
        server 127.0.0.1:9001 weight=1 max_fails=2 fail_timeout=10s;
        server 127.0.0.1:9000 weight=1 max_fails=2 fail_timeout=10s down;
"""


def test_check_status_json_with_the_modules_trailing_comma_is_read_per_upstream() -> None:
    assert parse_check_status_json(CHECK_JSON_TRAILING_COMMA, "app") == {
        "127.0.0.1:9000": "up",
        "127.0.0.1:9001": "down",
    }


def test_check_status_csv() -> None:
    text = "0,app,127.0.0.1:9000,up,58,0,http,0\n1,app,127.0.0.1:9001,down,0,3,http,0\n2,x,127.0.0.1:1,up,1,0,http,0\n"
    assert parse_check_status_csv(text, "app") == {"127.0.0.1:9000": "up", "127.0.0.1:9001": "down"}


def test_upstream_show_lists_the_kv_down_flag() -> None:
    assert parse_upstream_show(UPSTREAM_SHOW, "app") == {"127.0.0.1:9001": False, "127.0.0.1:9000": True}
    with pytest.raises(NginxFormatError, match="no upstream named"):
        parse_upstream_show("The upstream you requested does not exist. Please double-check the name", "app")


def test_a_server_nginx_has_not_checked_yet_is_unchecked_not_up() -> None:
    # After nginx starts (or upsync adds a server) the module shows its default, "up", until the first
    # check: rise and fall are both 0 then, and the status says nothing about the node.
    page = """{"servers": {"total": 2, "generation": 1, "server": [
     {"index": 0, "upstream": "app", "name": "127.0.0.1:9000", "status": "up", "rise": 0, "fall": 0, "type": "http"},
     {"index": 1, "upstream": "app", "name": "127.0.0.1:9001", "status": "up", "rise": 1, "fall": 0, "type": "http"},
     {"index": 2, "upstream": "app", "name": "127.0.0.1:9002", "status": "up", "rise": 0, "fall": 1, "type": "http"}
    ]}}"""
    # ...and one whose last check failed is still routed ("up") but not healthy.
    assert parse_check_status_json(page, "app") == {
        "127.0.0.1:9000": "unchecked",
        "127.0.0.1:9001": "up",
        "127.0.0.1:9002": "failing",
    }
    text = "0,app,127.0.0.1:9000,up,0,0,http,0\n1,app,127.0.0.1:9001,down,0,1,http,0\n"
    assert parse_check_status_csv(text, "app") == {"127.0.0.1:9000": "unchecked", "127.0.0.1:9001": "down"}


async def test_an_unreadable_nginx_page_is_reported_without_the_password_in_its_url() -> None:
    """A status page behind basic auth: the password is in the URL; it must not reach chat or the log."""
    import httpx

    from bot.nginx.status import HttpNginxReader
    from bot.processes import free_port
    from commands.settings import AppSettings, HealthSettings, NginxSettings

    port = free_port()  # nothing listens: the read fails
    nginx = NginxSettings(
        status_url=f"http://ops:s3cret@127.0.0.1:{port}/upstream_status?format=json",
        list_url=f"http://ops:s3cret@127.0.0.1:{port}/upstream_list",
    )
    apps = {"app": AppSettings("app", "app", nginx, HealthSettings())}
    async with httpx.AsyncClient(trust_env=False) as client:
        view = await HttpNginxReader(apps, client, timeout=2).read("app")
    assert len(view.errors) == 2 and all("unreadable" in e for e in view.errors), view.errors
    assert not any("s3cret" in e for e in view.errors)
    assert f"http://***@127.0.0.1:{port}/upstream_list" in view.errors[1]
