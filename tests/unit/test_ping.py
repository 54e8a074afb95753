"""The monitoring ping against an endpoint on loopback: one that answers,
one that hangs, one that refuses."""
import logging

from support.ping_server import (PingServer, closed_port_url, hanging_ping_server,  # noqa: F401
                                 ping_server)

import vmbackup
from vmbackup import Settings


def test_a_ping_posts_the_summary_to_the_healthchecks_path(ping_server, caplog):
    settings = Settings(ping_url=ping_server.url, ping_timeout=5)
    caplog.set_level(logging.DEBUG, logger='vmbackup')
    assert vmbackup.ping(settings, 'start', 'started') is True
    assert vmbackup.ping(settings, 'fail', 'vmbackup: it failed, é') is True
    assert ping_server.paths() == ['/0b4b-secret-uuid/start', '/0b4b-secret-uuid/fail']
    assert ping_server.pings[1]['body'] == 'vmbackup: it failed, é'
    assert ping_server.pings[1]['headers']['Content-Type'].startswith('text/plain')
    assert 'secret' not in caplog.text
    assert 'http://127.0.0.1' in caplog.text


def test_a_long_summary_is_cut_to_the_ping_body_limit(ping_server):
    settings = Settings(ping_url=ping_server.url, ping_timeout=5)
    vmbackup.ping(settings, 'success', 'x' * (vmbackup.PING_BODY_LIMIT + 500))
    assert len(ping_server.pings[0]['body']) == vmbackup.PING_BODY_LIMIT


def test_without_a_ping_url_nothing_is_sent():
    assert vmbackup.ping(Settings(), 'start') is None


def test_a_hanging_endpoint_costs_one_timeout_and_one_warning(hanging_ping_server, caplog):
    settings = Settings(ping_url=hanging_ping_server.url, ping_timeout=0.5)
    assert vmbackup.ping(settings, 'success', 'done') is False
    assert hanging_ping_server.paths() == ['/0b4b-secret-uuid']   # one attempt
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == (
        'monitoring ping (success) to http://127.0.0.1 failed: no answer within '
        '0.5 seconds ([status] ping_timeout)')


def test_a_refused_ping_is_one_warning_without_the_secret(caplog):
    settings = Settings(ping_url=closed_port_url(), ping_timeout=5)
    assert vmbackup.ping(settings, 'fail', 'x') is False
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 'refused' in warning.getMessage()
    assert 'secret' not in warning.getMessage()


def test_an_error_answer_is_one_warning(caplog):
    with PingServer() as server:
        settings = Settings(ping_url=server.url.replace('0b4b', '0b4b/x/..'),
                            ping_timeout=5)
        # a server answering 404 (an unknown check)
        server.httpd.RequestHandlerClass.do_POST = lambda handler: (
            handler.send_error(404), None)
        assert vmbackup.ping(settings, 'success', 'x') is False
    assert 'HTTP Error 404' in caplog.text and 'secret' not in caplog.text
