"""Tests for yimmo._options: the option table, the command line and
environment parsing, keyword validation and the generated docs.

No server is started; these run without the C extension doing anything.
"""

import os

import pytest

from helpers import run_cli
from yimmo._options import (DEFAULTS, OPTIONS, options_rst, parse_address,
                            parse_args, validate)


def parse(argv, environ=None):
    """parse_args with a controlled environment (never the real one)."""
    return parse_args(argv, environ or {})


def parse_error(capsys, argv, environ=None):
    """Run parse_args expecting a usage error; return the stderr text."""
    with pytest.raises(SystemExit) as info:
        parse(argv, environ)
    assert info.value.code == 2
    return capsys.readouterr().err


# -- the table ----------------------------------------------------------------


def test_defaults_match_the_contract():
    assert DEFAULTS == {
        "bind": ["127.0.0.1:8000"],
        "workers": 8,
        "backlog": 2048,
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "limit_request_head_size": 65536,
        "max_body_size": 0,
        "header_timeout": 10.0,
        "keepalive_timeout": 5.0,
        "body_timeout": 30.0,
        "write_timeout": 30.0,
        "buffer_body": 65536,
        "min_body_rate": 1024,
        "max_pending": None,
        "queue_timeout": 0.0,
        "graceful_timeout": 30.0,
        "access_log": None,
        "access_log_format": None,
        "error_log": "-",
        "log_level": "info",
        "forwarded_allow_ips": ["127.0.0.1", "::1"],
        "proxy_headers": ["X-Forwarded-For", "X-Forwarded-Proto"],
        "proxy_protocol": False,
        "log_config": None,
        "timeout": 30.0,
        "processes": 1,
        "reuse_port": False,
        "preload": False,
        "max_requests": 0,
        "max_requests_jitter": 0,
        "max_rss": 0,
        "max_lifetime": 0.0,
        "max_lifetime_jitter": 0.0,
        "heartbeat_timeout": 20.0,
        "start_timeout": 60.0,
        "unix_socket_mode": None,
    }


def test_every_option_has_a_yimmo_env_var_and_a_long_flag():
    for opt in OPTIONS:
        assert opt.env == "YIMMO_" + opt.name.upper()
        assert "--" + opt.name.replace("_", "-") in opt.flags
        assert opt.help.strip()


def test_defaults_pass_their_own_validation():
    assert validate({}) == DEFAULTS
    assert validate(dict(DEFAULTS)) == DEFAULTS


def test_validate_result_is_a_fresh_copy():
    options = validate({})
    options["bind"].append("0.0.0.0:1")
    assert DEFAULTS["bind"] == ["127.0.0.1:8000"]


# -- command line and environment ---------------------------------------------


def test_no_options_gives_defaults():
    app, options = parse(["myapp:app"])
    assert app == "myapp:app"
    assert options == DEFAULTS


def test_env_var_overrides_default():
    _, options = parse(["app"], {"YIMMO_WORKERS": "3",
                                 "YIMMO_HEADER_TIMEOUT": "2.5",
                                 "YIMMO_LOG_LEVEL": "DEBUG",
                                 "YIMMO_ACCESS_LOG": "-"})
    assert options["workers"] == 3
    assert options["header_timeout"] == 2.5
    assert options["log_level"] == "debug"
    assert options["access_log"] == "-"


def test_flag_overrides_env_var():
    _, options = parse(["--workers", "5", "app"], {"YIMMO_WORKERS": "3"})
    assert options["workers"] == 5


def test_short_flags():
    _, options = parse(["-w", "2", "-b", ":9000", "app"])
    assert options["workers"] == 2
    assert options["bind"] == [":9000"]


def test_bind_flag_repeats_and_replaces_env_list():
    environ = {"YIMMO_BIND": "127.0.0.1:1, unix:/tmp/a.sock"}
    _, options = parse(["app"], environ)
    assert options["bind"] == ["127.0.0.1:1", "unix:/tmp/a.sock"]
    _, options = parse(["-b", "[::1]:0", "--bind", "2", "app"], environ)
    assert options["bind"] == ["[::1]:0", "2"]


def test_client_timeout_alias_sets_three_timeouts():
    _, options = parse(["--client-timeout", "7", "app"])
    assert options["header_timeout"] == 7.0
    assert options["body_timeout"] == 7.0
    assert options["write_timeout"] == 7.0
    assert options["keepalive_timeout"] == DEFAULTS["keepalive_timeout"]
    assert "client_timeout" not in options
    # --timeout is the request timeout now, not this shortcut.
    assert options["timeout"] == DEFAULTS["timeout"] == 30.0


def test_timeout_is_the_request_timeout():
    _, options = parse(["--timeout", "7", "app"])
    assert options["timeout"] == 7.0
    assert options["header_timeout"] == DEFAULTS["header_timeout"]
    assert options["body_timeout"] == DEFAULTS["body_timeout"]
    _, options = parse(["-t", "0", "app"])
    assert options["timeout"] == 0.0
    _, options = parse(["app"], {"YIMMO_TIMEOUT": "2.5"})
    assert options["timeout"] == 2.5


def test_specific_timeout_beats_alias_at_same_level():
    _, options = parse(["--header-timeout", "1", "--client-timeout", "7",
                        "app"])
    assert options["header_timeout"] == 1.0
    assert options["body_timeout"] == 7.0


def test_alias_flag_beats_specific_env_var():
    _, options = parse(["--client-timeout", "7", "app"],
                       {"YIMMO_HEADER_TIMEOUT": "1",
                        "YIMMO_CLIENT_TIMEOUT": "3"})
    assert options["header_timeout"] == 7.0


def test_limit_request_line_zero_means_maximum():
    _, options = parse(["--limit-request-line", "0", "app"])
    assert options["limit_request_line"] == 65536


# The least values the C core takes (ext/module.c): the table refuses what
# is smaller, naming the option, before anything is bound (the core's own
# message named neither the option nor the minimum).
CORE_MINIMUMS = [
    ("--header-timeout", "0.0009", "a number of seconds >= 0.001"),
    ("--body-timeout", "0.0005", "a number of seconds >= 0.001"),
    ("--write-timeout", "1e-9", "a number of seconds >= 0.001"),
    ("--client-timeout", "0.0001", "a number of seconds >= 0.001"),
    ("--limit-request-line", "15", "0 or an int from 16 to 65536"),
    ("--limit-request-field-size", "15", "an int from 16 to 2147483647"),
    ("--limit-request-head-size", "63", "an int from 64 to 2147483647"),
]


@pytest.mark.parametrize("flag, value, expected", CORE_MINIMUMS)
def test_values_below_the_core_minimum_are_usage_errors(capsys, flag, value,
                                                        expected):
    err = parse_error(capsys, [flag, value, "app"])
    assert err.startswith("yimmo: error: argument %s: must be %s, got "
                          % (flag, expected)), err
    assert err.count("\n") == 1, err
    name = flag[2:].replace("-", "_")
    number = float(value) if "timeout" in flag else int(value)
    with pytest.raises(ValueError, match=r"^option %r: must be %s, got "
                       % (name, expected)):
        validate({name: number})


def test_the_core_minimums_themselves_are_accepted():
    _, options = parse(["--header-timeout", "0.001", "--body-timeout",
                        "0.001", "--write-timeout", "0.001",
                        "--limit-request-line", "16",
                        "--limit-request-field-size", "16",
                        "--limit-request-head-size", "64", "app"])
    assert options["header_timeout"] == 0.001
    assert options["limit_request_line"] == 16
    assert options["limit_request_head_size"] == 64


def test_value_below_the_core_minimum_is_refused_before_forking():
    # Under a supervisor the core saw the value only in each forked server
    # process: six of them failed before the supervisor gave up.
    result = run_cli(["--body-timeout", "0.0005", "-p", "2",
                      "--bind", "127.0.0.1:0", "a:app"], timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("yimmo: error: argument --body-timeout: must "
                             "be a number of seconds >= 0.001, got "
                             "0.0005\n")


def test_empty_access_log_turns_it_off():
    _, options = parse(["--access-log", "", "app"],
                       {"YIMMO_ACCESS_LOG": "/tmp/x.log"})
    assert options["access_log"] is None


@pytest.mark.parametrize("argv, expected", [
    (["-w", "0", "app"], "argument -w/--workers: must be an int from 1 to 4096, got 0"),
    (["--workers", "many", "app"], "must be an int from 1 to 4096, got 'many'"),
    (["--header-timeout", "0", "app"],
     "must be a number of seconds >= 0.001, got 0.0"),
    (["--keepalive-timeout", "-1", "app"], "must be a number of seconds >= 0"),
    (["--graceful-timeout", "nan", "app"], "got nan"),
    (["--log-level", "loud", "app"], "must be one of debug, info, warning"),
    (["--bind", "::1:80", "app"], "put an IPv6 address in brackets"),
    (["--bind", "host:http", "app"], "port must be a number"),
    (["--limit-request-line", "70000", "app"],
     "must be 0 or an int from 16 to 65536"),
    (["--forwarded-allow-ips", "::ffff:0:0/95", "app"],
     "an IPv4-mapped network (::ffff:a.b.c.d/N) needs a prefix of 96 to 128"),
    (["--no-such-flag", "app"], "unrecognized arguments: --no-such-flag"),
    ([], "the following arguments are required: APP"),
])
def test_bad_flags_give_one_line_error(capsys, argv, expected):
    err = parse_error(capsys, argv)
    assert err.startswith("yimmo: error: ")
    assert expected in err
    assert err.count("\n") == 1, err  # no usage block, no traceback


def test_bad_env_var_names_the_variable(capsys):
    err = parse_error(capsys, ["app"], {"YIMMO_BACKLOG": "lots"})
    assert err == ("yimmo: error: YIMMO_BACKLOG: must be an int from 1 "
                   "to 2147483647, got 'lots'\n")


def test_abbreviated_flags_are_not_accepted(capsys):
    err = parse_error(capsys, ["--work", "3", "app"])
    assert "unrecognized arguments" in err


def test_help_lists_flags_and_env_vars(capsys):
    with pytest.raises(SystemExit) as info:
        parse(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for opt in OPTIONS:
        assert opt.flags[-1] in out
        assert opt.env in out


# -- keyword arguments --------------------------------------------------------


def test_validate_normalises_values():
    options = validate({"bind": "127.0.0.1:0", "workers": 2,
                        "header_timeout": 3, "log_level": "WARNING"})
    assert options["bind"] == ["127.0.0.1:0"]
    assert options["workers"] == 2
    assert options["header_timeout"] == 3.0
    assert isinstance(options["header_timeout"], float)
    assert options["log_level"] == "warning"


def test_validate_timeout_alias_does_not_override_explicit_keyword():
    options = validate({"client_timeout": 4, "write_timeout": 9})
    assert options["header_timeout"] == 4.0
    assert options["body_timeout"] == 4.0
    assert options["write_timeout"] == 9.0
    assert "client_timeout" not in options
    assert options["timeout"] == 30.0
    assert validate({"client_timeout": None}) == DEFAULTS


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match=r"^unknown option 'wrokers' "
                                        r"\(did you mean 'workers'\?\)$"):
        validate({"wrokers": 2})
    with pytest.raises(TypeError, match=r"^unknown option 'zzz'$"):
        validate({"zzz": 1})


@pytest.mark.parametrize("name", ["config", "reload"])
def test_a_command_line_only_option_as_a_keyword_says_so(name):
    # It said "unknown option 'config' (did you mean 'config'?)".
    with pytest.raises(TypeError, match=r"^option %r is only for the "
                       r"command line \(--%s\), not a keyword argument$"
                       % (name, name)):
        validate({name: "x"})


def test_a_keyword_typo_is_not_matched_to_a_command_line_only_option():
    with pytest.raises(TypeError) as info:
        validate({"confi": "x.py"})
    assert str(info.value) == \
        "unknown option 'confi' (did you mean 'log_config'?)"


@pytest.mark.parametrize("options, error, message", [
    ({"workers": 0}, ValueError, "option 'workers': must be an int from 1 to 4096"),
    ({"workers": "4"}, TypeError, "option 'workers': must be an int, not str"),
    ({"workers": True}, TypeError, "must be an int, not bool"),
    ({"workers": 2.0}, TypeError, "must be an int, not float"),
    ({"max_body_size": -1}, ValueError, "must be an int from 0 to"),
    ({"header_timeout": 0}, ValueError,
     "must be a number of seconds >= 0.001"),
    ({"body_timeout": float("inf")}, ValueError, "got inf"),
    ({"keepalive_timeout": "5"}, TypeError, "must be a number of seconds"),
    ({"log_level": "verbose"}, ValueError, "must be one of"),
    ({"log_level": 10}, TypeError, "must be a str, not int"),
    ({"access_log": 1}, TypeError, "must be a str or None"),
    ({"bind": []}, ValueError, "needs at least one address"),
    ({"bind": 8000}, TypeError, "must be a str or a list of str"),
    ({"bind": ["127.0.0.1:1", 2]}, TypeError, "containing int"),
    ({"bind": "127.0.0.1:99999"}, ValueError, "port must be a number"),
])
def test_validate_rejects_bad_values(options, error, message):
    with pytest.raises(error) as info:
        validate(options)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# -- addresses ----------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("localhost:0", ("localhost", 0)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::]:80", ("::", 80)),
    ("8000", ("0.0.0.0", 8000)),
    (":8000", ("0.0.0.0", 8000)),
    ("unix:/tmp/yimmo.sock", "/tmp/yimmo.sock"),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", [
    "", "host:", "host:-1", "host:65536", "::1:80", "[::1]", "[]:80",
    "[::1]80", "unix:", "a b:80", "host:8o",
    # str.isdigit() takes these: "invalid literal for int()", or port 12.
    "127.0.0.1:\u00b2", "127.0.0.1:\u0661\u0662", "[::1]:\u00b9",
])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError, match="bad address"):
        parse_address(text)


# -- docs ---------------------------------------------------------------------


def test_options_rst_mentions_every_option():
    text = options_rst()
    for opt in OPTIONS:
        assert "``%s``" % opt.name in text
        assert opt.env in text
        for flag in opt.flags:
            assert flag in text


def test_options_rst_is_a_definition_list():
    lines = options_rst().splitlines()
    terms = [line for line in lines if line and not line.startswith(" ")]
    assert len(terms) == len(OPTIONS)
    assert all(line.startswith("``-") for line in terms)


# -- processes, switches, file modes, fd:// -----------------------------------


def test_processes_auto_is_the_cpu_count():
    expected = min(len(os.sched_getaffinity(0)), 128)
    assert parse(["--processes", "auto", "a:b"])[1]["processes"] == expected
    assert validate({"processes": "auto"})["processes"] == expected
    assert parse(["a:b"], {"YIMMO_PROCESSES": "3"})[1]["processes"] == 3


def test_switches_take_no_value_and_do_not_swallow_the_app():
    app, opts = parse(["--preload", "--reuse-port", "a:b"])
    assert app == "a:b"
    assert opts["preload"] is True and opts["reuse_port"] is True
    _, opts = parse(["a:b"], {"YIMMO_PRELOAD": "yes",
                              "YIMMO_REUSE_PORT": "0"})
    assert opts["preload"] is True and opts["reuse_port"] is False


def test_unix_socket_mode_is_octal():
    assert parse(["--unix-socket-mode", "660", "a:b"])[1][
        "unix_socket_mode"] == 0o660
    assert parse(["--unix-socket-mode", "0o600", "a:b"])[1][
        "unix_socket_mode"] == 0o600
    assert validate({"unix_socket_mode": 0o640})["unix_socket_mode"] == \
        0o640
    assert parse(["--unix-socket-mode", "0777", "a:b"])[1][
        "unix_socket_mode"] == 0o777


def test_a_decimal_unix_socket_mode_is_named_as_such():
    # 660 where 0o660 was meant (Python, a config file) is 0o1224.
    with pytest.raises(ValueError, match="got 660, a decimal number: "
                       "write 0o660"):
        validate({"unix_socket_mode": 660})
    with pytest.raises(ValueError, match="from 0 to 777, got 1747$"):
        validate({"unix_socket_mode": 999})


@pytest.mark.parametrize("argv, expected", [
    (["--processes", "0", "a:b"], 'must be an int from 1 to 128 or "auto"'),
    (["--processes", "129", "a:b"], 'must be an int from 1 to 128 or "auto"'),
    (["--processes", "many", "a:b"],
     'must be an int from 1 to 128 or "auto"'),
    (["--unix-socket-mode", "8", "a:b"], "octal file mode"),
    (["--unix-socket-mode", "1777", "a:b"], "octal file mode"),
    (["--max-requests", "-1", "a:b"], "int from 0 to"),
    (["--bind", "fd://x", "a:b"], "fd://N"),
])
def test_bad_process_options_give_one_line_error(capsys, argv, expected):
    err = parse_error(capsys, argv)
    assert err.count("\n") == 1 and err.startswith("yimmo: error: ")
    assert expected in err


def test_bad_switch_in_environment(capsys):
    err = parse_error(capsys, ["a:b"], {"YIMMO_PRELOAD": "maybe"})
    assert "YIMMO_PRELOAD" in err and "1/true/yes/on" in err


def test_parse_address_fd():
    assert parse_address("fd://3") == 3
    for text in ("fd://\u00b3", "fd://\u0663"):
        with pytest.raises(ValueError, match="expected fd://N"):
            parse_address(text)


def test_a_superscript_port_is_the_usual_bad_port_line(capsys):
    err = parse_error(capsys, ["--bind", "127.0.0.1:\u00b2", "app"])
    assert err == ("yimmo: error: argument -b/--bind: bad address "
                   "'127.0.0.1:\u00b2': port must be a number from 0 to "
                   "65535\n")


def test_a_network_prefix_in_other_digits_is_refused():
    with pytest.raises(ValueError, match="bad address or network"):
        validate({"forwarded_allow_ips": ["10.0.0.0/\u0668"]})


def test_ipv4_mapped_networks_are_accepted():
    """::ffff:a.b.c.d/N with N from 96 to 128 is an IPv4 network, as the
    core reads it (the core's side: tests/test_forwarded.py)."""
    _, opts = parse(["--forwarded-allow-ips",
                     "::ffff:0:0/96,::ffff:10.0.0.0/104,::ffff:127.0.0.1/128",
                     "app"])
    assert opts["forwarded_allow_ips"] == [
        "::ffff:0:0/96", "::ffff:10.0.0.0/104", "::ffff:127.0.0.1/128"]


HUGE = "9" * 23


@pytest.mark.parametrize("opt", [o for o in OPTIONS if o.flags and
                                 type(o.kind).__name__ in ("Int",
                                                           "Processes")])
def test_huge_ints_are_refused_in_one_line(capsys, opt):
    # Every int option has a maximum: a 23-digit value is a bad value
    # (one line, exit 2), never an OverflowError on the way to C.
    err = parse_error(capsys, [opt.flags[-1], HUGE, "app"])
    assert "an int from " in err and HUGE in err, err
    assert err.count("\n") == 1, err
    with pytest.raises(ValueError, match="must be (0 or )?an int from "):
        validate({opt.name: int(HUGE)})


def test_huge_workers_on_the_command_line_exits_2():
    result = run_cli(["--workers", HUGE, "--bind", "127.0.0.1:0", "a:app"],
                     timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("yimmo: error: ")
    assert result.stderr.count("\n") == 1, result.stderr
