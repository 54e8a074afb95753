"""Bad input: the command line, the config file, and an engine that can't be
reached or trusted. Each gets one clear line and the documented exit code."""
import os
import subprocess

import pytest
import trustme

from conftest import (FAKEBIN, MASTER, PASSWORD, PYTHON, SLAVE, SLAVEVOL, USER,
                      VMBACKUP, assert_invariants)


def one_error_line(result):
    errors = [l for l in result.err.splitlines() if ' ERROR ' in l]
    assert len(errors) == 1, result.err
    assert 'Traceback' not in result.output
    assert PASSWORD not in result.output
    return errors[0]


@pytest.mark.parametrize('args, expected', [
    ([], 'the following arguments are required'),
    ([MASTER, SLAVE], 'the following arguments are required'),
    ([MASTER, SLAVE, SLAVEVOL], 'the following arguments are required: -c'),
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '-i', 'often'], "invalid int value: 'often'"),
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '-i', '0'], '--interval must be at least 1'),
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '-t', '-5'], '--timeout must be 0'),
    (['../etc', SLAVE, SLAVEVOL, '-c', 'x'], "MASTERVOL '../etc' is not a gluster volume name"),
    ([MASTER, 'a b', SLAVEVOL, '-c', 'x'], "SLAVE 'a b' is not HOST"),
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '-v', '-q'], 'not allowed with argument'),
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '--frobnicate'], 'unrecognized arguments'),
])
def test_a_bad_command_line_is_refused_with_exit_2(args, expected):
    process = subprocess.run([PYTHON, str(VMBACKUP), *args],
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 2
    assert expected in process.stderr
    assert 'Traceback' not in process.stderr


def test_help_is_the_manual():
    process = subprocess.run([PYTHON, str(VMBACKUP), '--help'],
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 0
    assert 'The steps of a run' in process.stdout
    assert 'Make the remote copy restorable' in process.stdout


BAD_CONFIGS = [
    ('missing connection section', dict(connection={'server': None, 'user_name': None,
                                                    'password': None, 'ca_file': None,
                                                    'timeout': None}),
     '[connection] server is missing'),
    ('missing server', dict(connection={'server': None}), '[connection] server is missing'),
    ('missing user', dict(connection={'user_name': None}), '[connection] user_name is missing'),
    ('missing password', dict(connection={'password': None}), '[connection] password is missing'),
    ('empty password', dict(connection={'password': ''}), '[connection] password is empty'),
    ('not a url', dict(connection={'server': 'engine.example.com'}), 'is not an https://'),
    ('http without insecure', dict(connection={'server': 'http://e.example.com/ovirt-engine/api'}),
     'is not https'),
    ('missing ca file', dict(connection={'ca_file': '/nonexistent/ca.pem'}),
     'ca_file /nonexistent/ca.pem does not exist'),
    ('bad insecure', dict(connection={'insecure': 'maybe'}), "insecure = 'maybe' must be yes or no"),
    ('bad request timeout', dict(connection={'timeout': 'soon'}),
     "[connection] timeout = 'soon' is not a whole number"),
    ('zero request timeout', dict(connection={'timeout': '0'}), 'timeout = 0 must be more than 0'),
    ('text wait timeout', dict(snapshot={'wait_timeout': 'ten'}),
     "[snapshot] wait_timeout = 'ten' is not a number"),
    ('negative wait timeout', dict(snapshot={'wait_timeout': '-1'}),
     '[snapshot] wait_timeout = -1 must be more than 0'),
    ('nan poll interval', dict(snapshot={'poll_interval': 'nan'}),
     '[snapshot] poll_interval = nan must be more than 0'),
    ('missing scheduler', dict(gluster={'schedule_georep': '/nonexistent/schedule_georep.py'}),
     'schedule_georep: /nonexistent/schedule_georep.py does not exist'),
    ('missing glusterfs', dict(gluster={'glusterfs': '/nonexistent/glusterfs'}),
     '[gluster] glusterfs /nonexistent/glusterfs is not an executable file'),
    ('missing lock dir', dict(lock={'lock_dir': '/nonexistent/lock'}),
     '[lock] lock_dir /nonexistent/lock is not a directory'),
    ('missing logger conf', dict(logging={'logger_conf': '/nonexistent/log.conf'}),
     '[logging] logger_conf /nonexistent/log.conf does not exist'),
]


@pytest.mark.parametrize('label, sections, expected', BAD_CONFIGS,
                         ids=[case[0] for case in BAD_CONFIGS])
def test_a_bad_config_is_refused_with_exit_2_before_contacting_the_engine(
        site, label, sections, expected):
    result = site.run(config=site.config(**sections))
    assert result.code == 2, result.output
    line = one_error_line(result)
    assert expected in line
    assert site.engine.requests == []


def test_every_problem_of_a_config_is_named_at_once(site):
    result = site.run(config=site.config(connection={'password': '', 'timeout': 'x'},
                                         snapshot={'wait_timeout': '0'}))
    assert result.code == 2
    line = one_error_line(result)
    for part in ('password is empty', "timeout = 'x'", 'wait_timeout = 0'):
        assert part in line


@pytest.mark.parametrize('text, expected', [
    (None, 'cannot read config file'),
    ('[connection\nserver = x\n', 'is not a valid INI file'),
    ('server = x\n', 'is not a valid INI file'),
])
def test_an_unreadable_or_broken_config_file_is_refused(site, text, expected):
    if text is None:
        path = str(site.tmp / 'absent.cfg')
    else:
        path = site.config(text=text)
    result = site.run(config=path)
    assert result.code == 2
    assert expected in one_error_line(result)


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads any file')
def test_a_config_file_without_read_permission_is_refused(site):
    result = site.run(config=site.config(mode=0o000))
    assert result.code == 2
    assert 'Permission denied' in one_error_line(result)


def test_a_config_readable_by_everyone_gets_a_warning(site):
    result = site.run('--dry-run', config=site.config(mode=0o644))
    assert result.code == 0, result.output
    assert 'is readable by every user' in result.err
    assert 'chmod 600' in result.err


def test_a_config_of_the_2016_tool_works_unchanged(site):
    # sections connection, logging and snapshot as the 2016 tool wrote them,
    # with its v3-style URL; [gluster] and [lock] only point at the fakes
    text = ('[connection]\nserver=%s\nuser_name=%s\npassword=%s\nca_file=%s\n\n'
            '[logging]\n\n[snapshot]\n#timeout value in minutes\nwait_timeout=10\n'
            '[gluster]\nschedule_georep=%s\nglusterfs=%s\ngluster=%s\n[lock]\nlock_dir=%s\n'
            % (site.engine.url.replace('/ovirt-engine/api', '/api'), USER,
               PASSWORD, site.ca_file, VMBACKUP, '/bin/true',
               FAKEBIN / 'gluster', site.lock_dir))
    site.add_vm('web')
    result = site.run('--dry-run', config=site.config(text=text))
    assert result.code == 0, result.output
    assert '  web: snapshot' in result.out


def test_a_wrong_password_is_one_line_and_exit_1(site):
    result = site.run(config=site.config(connection={'password': 'wrong-one'}))
    assert result.code == 1
    assert 'refused the login of admin@internal' in result.err
    assert 'wrong-one' not in result.output
    assert 'Traceback' not in result.output


def test_an_engine_that_is_down_is_one_line_and_exit_1(site):
    result = site.run(config=site.config(
        connection={'server': 'https://127.0.0.1:9/ovirt-engine/api'}))
    assert result.code == 1
    assert 'cannot reach the engine at https://127.0.0.1:9/ovirt-engine/api' in result.err
    assert 'Traceback' not in result.output


def test_insecure_skips_verification_with_a_warning(site):
    site.add_vm('web')
    result = site.run('--dry-run', config=site.config(
        connection={'ca_file': None, 'insecure': 'yes'}))
    assert result.code == 0, result.output
    assert 'NOT verified' in result.err
