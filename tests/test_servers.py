import json

from commands.addresses import ServerAddress
from commands.servers import ServerEntry, encode

A = ServerAddress("10.0.0.5", 9000)


def test_values_are_read_the_way_upsync_reads_them() -> None:
    entry = ServerEntry.from_kv(A, b'{"Weight":"3","max_fails":2,"fail_timeout":"10s","down":"1"}', 7)
    assert (entry.weight, entry.max_fails, entry.fail_timeout, entry.drained) == (3, 2, 10, True)
    # `down` is exactly 0 or 1 for upsync; these are logged invalid and the server serves (measured).
    for invalid in (b'"true"', b'"1.0"', b'" 1"', b"2", b"-1"):
        odd = ServerEntry.from_kv(A, b'{"down":' + invalid + b"}", 7)
        assert not odd.drained and not odd.surely_serving and odd.down_flag is None
    assert ServerEntry.from_kv(A, b'{"weight":0}', 1).weight == 1  # upsync turns weight <= 0 into 1


def kv(value: bytes) -> ServerEntry:
    return ServerEntry.from_kv(A, value, 1)


def test_down_is_read_as_upsync_parse_json_reads_it() -> None:
    """ngx_http_upsync_module.c: cJSON's valueint when not 0, else a string through ngx_atoi (digits only),
    else 0; only 0 and 1 are valid, anything else serves."""
    for drained in (b"1", b'"1"', b'"01"', b"1.0", b"1.7", b"true"):
        assert kv(b'{"down":' + drained + b"}").drained, drained
    for serving in (b"0", b'"0"', b"0.5", b"false", b"null", b"[]", b"{}"):
        entry = kv(b'{"down":' + serving + b"}")
        assert not entry.drained and entry.down_flag == 0, serving
    for invalid in (b'"true"', b'"1.0"', b'" 1"', b'""', b"2", b"-1", b'"-1"', b"1e12"):
        entry = kv(b'{"down":' + invalid + b"}")
        assert not entry.drained and entry.down_flag is None, invalid  # logged invalid by upsync; serving


def test_weight_max_fails_and_fail_timeout_are_what_nginx_uses_and_status_says_so() -> None:
    entry = kv(b'{"weight":"2.7","max_fails":-3,"fail_timeout":"30","down":0}')
    assert (entry.weight, entry.max_fails, entry.fail_timeout) == (1, 2, 30)  # "2.7" is not digits: 1
    assert entry.misread() == [
        'weight="2.7" is read by nginx-upsync-module as 1',
        "max_fails=-3 is read by nginx-upsync-module as 2",
    ]
    assert kv(b'{"weight":2.7}').weight == 2  # a number: truncated, as C's (int)
    assert kv(b'{"weight":"3","max_fails":"1","fail_timeout":5}').misread() == []


def test_an_invalid_value_is_serving_with_defaults_and_flagged() -> None:
    entry = ServerEntry.from_kv(A, b"{weight:1", 3)
    assert not entry.drained
    assert entry.invalid_value == "not JSON"
    assert ServerEntry.from_kv(A, b"", 3).invalid_value == "empty value"


def test_drain_keeps_unknown_fields_and_their_spelling() -> None:
    entry = ServerEntry.from_kv(A, b'{"weight":2,"DOWN":0,"zone":"eu-1","backup":0}', 5)
    fields = json.loads(encode(entry.with_down(True)))
    assert fields == {"weight": 2, "DOWN": 1, "zone": "eu-1", "backup": 0}


def test_the_json_itself_is_taken_as_cjson_takes_it() -> None:
    """cJSON_GetObjectItem: the first key equal but for case counts (json.loads would keep the last);
    NaN is refused (nginx then serves with the defaults); what follows the first value is ignored."""
    assert not kv(b'{"weight":1,"down":0,"down":1}').drained  # nginx serves it
    assert kv(b'{"down":1,"down":0}').drained and not kv(b'{"down":1,"down":0}').surely_serving
    assert kv(b'{"DOWN":1,"down":0}').drained
    nan = kv(b'{"down":1,"x":NaN}')
    assert nan.invalid_value == "not JSON" and not nan.drained
    assert kv(b'{"down":1} trailing').drained
    assert json.loads(encode(kv(b'{"DOWN":1,"down":0}').with_down(False))) == {"DOWN": 0}


def test_a_value_over_upsyncs_buffer_is_flagged_and_never_counted_on() -> None:
    big = kv(encode({"down": 0, "note": "x" * 1100}).encode())
    assert big.invalid_value is not None and "1024-byte buffer" in big.invalid_value
    assert not big.surely_serving
