"""Bad input: the command line, the config file, and an engine that can't be
reached or trusted. Each gets one clear line and the documented exit code."""
import os
import subprocess

import pytest
import trustme

from support.site import (FAKEBIN, MASTER, PASSWORD, PYTHON, SLAVE, SLAVEVOL, USER, needs_root,
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
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '-i', str(10 ** 12)], '--interval must be at least 1'),
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '-t', '-5'], '--timeout must be 0'),
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '-t', str(10 ** 20)], 'minutes up to 43200, not 1'),
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '-t', 'nan'], 'minutes up to 43200, not nan'),
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '-t', 'soon'], "invalid float value: 'soon'"),
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '--vm', ''], '--vm needs the name of a VM'),
    ([MASTER, SLAVE, SLAVEVOL, '-c', 'x', '--exclude', ' '], '--exclude needs the name of a VM'),
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
    # issue 17: values that can't be split or would overflow the waits
    ('server with an unclosed ipv6 bracket', dict(connection={'server': 'https://[::1'}),
     "[connection] server = 'https://[::1' is not an https://"),
    ('server with a port out of range', dict(connection={'server': 'https://e:99999/'}),
     "[connection] server = 'https://e:99999/' is not an https://"),
    ('ping url with an unclosed ipv6 bracket', dict(status={'ping_url': 'https://[::1'}),
     "[status] ping_url = 'https://[::1' is not an http(s) URL"),
    ('huge request timeout', dict(connection={'timeout': str(10 ** 30)}),
     '[connection] timeout = %d must be at most 604800' % 10 ** 30),
    ('huge scheduler grace', dict(gluster={'scheduler_grace': '99999999999'}),
     '[gluster] scheduler_grace = 99999999999 must be at most 604800'),
    ('huge mount timeout', dict(gluster={'mount_timeout': '99999999999'}),
     '[gluster] mount_timeout = 99999999999 must be at most 604800'),
    ('huge ping timeout', dict(status={'ping_timeout': '1e300'}),
     '[status] ping_timeout = 1e300 must be at most 604800'),
    ('infinite wait timeout', dict(snapshot={'wait_timeout': 'inf'}),
     '[snapshot] wait_timeout = inf must be more than 0'),
    ('huge wait timeout', dict(snapshot={'wait_timeout': '1e12'}),
     '[snapshot] wait_timeout = 1e12 must be at most 43200'),
    ('huge skip within', dict(lock={'skip_within': '1e12'}),
     '[lock] skip_within = 1e12 must be at most 43200'),
    ('too many connections', dict(connection={'connections': '100000'}),
     '[connection] connections = 100000 must be at most 64'),
    ('zero storage timeout', dict(lock={'storage_timeout': '0'}),
     '[lock] storage_timeout = 0 must be more than 0'),
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


# -- issue 17: bad input that ended in a traceback or a hang ------------------------

def logging_conf(site, args, mode=0o644):
    path = site.tmp / 'logging.conf'
    path.write_text('[loggers]\nkeys=root\n[handlers]\nkeys=file\n[formatters]\nkeys=\n'
                    '[logger_root]\nlevel=INFO\nhandlers=file\n'
                    '[handler_file]\nclass=FileHandler\nargs=%s\n' % args)
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize('args, expected', [
    ('(', 'cannot be used'),
    ('(nosuchname,)', "cannot be used: name 'nosuchname' is not defined"),
], ids=['unclosed', 'unknown name'])
def test_a_logger_conf_whose_args_cannot_be_evaluated_is_one_line_and_exit_2(
        site, args, expected):
    result = site.run(config=site.config(logging={'logger_conf': logging_conf(site, args)}))
    assert result.code == 2, result.output
    assert expected in one_error_line(result)
    assert site.engine.requests == []


def test_a_config_that_is_a_fifo_is_refused_at_once(site):
    path = site.tmp / 'fifo.cfg'
    os.mkfifo(str(path))
    result = site.run(config=str(path), timeout=30)     # no writer: open() would wait
    assert result.code == 2, result.output
    assert 'fifo.cfg is not a regular file' in one_error_line(result)


# a config names the programs run as root, and logging's config is evaluated
TRUST_CASES = [
    ('config writable by its group', 0o620, None, 'can be changed by its group', 'chmod go-w'),
    ('config writable by everyone', 0o602, None, 'can be changed by every user', 'chmod go-w'),
    ('config of another user', 0o600, 4321, 'belongs to uid 4321', 'chown root'),
    ('logger conf writable by everyone', 0o600, None, 'can be changed by every user',
     'chmod go-w'),
]


@pytest.mark.parametrize('label, mode, owner, expected, fix', TRUST_CASES,
                         ids=[case[0] for case in TRUST_CASES])
def test_a_config_that_others_can_change_is_refused_with_the_fix(
        site, label, mode, owner, expected, fix):
    if owner is not None and os.geteuid() != 0:
        pytest.skip('only root can give a file away')
    if label.startswith('logger'):
        target = logging_conf(site, '(%r,)' % str(site.tmp / 'log'), mode=0o646)
        config = site.config(logging={'logger_conf': target})
    else:
        config = target = site.config(mode=mode)
    if owner is not None:
        os.chown(target, owner, -1)
    result = site.run('--dry-run', config=config)
    assert result.code == 2, result.output
    line = one_error_line(result)
    assert expected in line and '%s %s' % (fix, target) in line
    assert site.engine.requests == []


def test_a_gluster_warning_on_stderr_before_its_xml_is_logged_and_the_session_found(site):
    site.add_vm('web')
    site.behave(gluster={'warning': 'Warning: the peer list is out of date'})
    result = site.run('--dry-run')
    assert result.code == 0, result.output
    assert 'gluster: Warning: the peer list is out of date' in result.err
    assert 'geo-replication session vmstore -> %s::%s exists' % (SLAVE, SLAVEVOL) in result.err


def test_a_lock_file_that_is_not_utf8_still_excludes_and_is_then_taken(site):
    site.add_vm('web')
    lock = site.lock_dir / ('vmbackup-%s.lock' % MASTER)
    lock.write_bytes(b'\xff\xfe\x80 not a record\n')
    handle = site.hold_lock()
    try:
        held = site.run()
    finally:
        handle.close()
    assert held.code == 3, held.output
    assert 'another backup of volume %s is running (holder unknown' % MASTER in held.err
    result = site.run()
    assert result.code == 0, result.output
    assert 'Traceback' not in held.output + result.output


# the check's own bad input: UNKNOWN (3), as a Nagios plugin says it
@pytest.mark.parametrize('args', [('--critical', 'inf'), ('--warning', 'nan'),
                                  ('--critical', '1e300')], ids=['inf', 'nan', 'huge'])
def test_check_with_hours_that_are_no_number_of_hours_is_unknown(site, args):
    result = site.run('--', MASTER, '--check', *args)
    assert result.code == 3, result.output
    assert result.out.startswith('VMBACKUP UNKNOWN - --warning and --critical are hours')
    assert 'Traceback' not in result.output


def status_document(**changes):
    import time
    now = time.time()
    document = {
        'version': 1, 'volume': MASTER, 'slave': SLAVE, 'slave_volume': SLAVEVOL,
        'node': 'gluster2', 'pid': 1, 'vmbackup_version': 'x',
        'started_at': now - 120, 'ended_at': now - 60, 'duration_seconds': 60.0,
        'exit_status': 0, 'succeeded': True, 'failures': [], 'steps': {'check': 1.0},
        'totals': {'vms': 1, 'vms_backed_up': 1, 'disks': 1, 'disks_backed_up': 1,
                   'disks_verified': 1, 'bytes_backed_up': 0, 'bytes_verified': 0,
                   'snapshots_left': 0},
        'vms': [{'name': 'web', 'outcome': 'backed up', 'disks': []}],
        'last_success': {'ended_at': now - 60, 'node': 'gluster2'}}
    document.update(changes)
    return document


BAD_STATUS = [
    ('totals vms is text', {'totals': {'vms': '3'}}, 'totals.vms is "3", not a number'),
    ('steps is text', {'steps': 'x'}, 'totals, vms or steps of the wrong type'),
    ('a step is text', {'steps': {'check': 'x'}}, 'steps.check is "x", not a number'),
    ('started at 1e300', {'started_at': 1e300}, 'started_at is not a time'),
    ('last success at 1e300', {'last_success': {'ended_at': 1e300}},
     'last_success has no ended_at time'),
    ('a vm that is text', {'vms': ['web']}, 'a VM of vms is not an object'),
]


@pytest.mark.parametrize('mode', ['--check', '--status'])
@pytest.mark.parametrize('label, changes, expected', BAD_STATUS,
                         ids=[case[0] for case in BAD_STATUS])
def test_a_status_file_with_values_of_the_wrong_kind_is_unknown_in_one_line(
        site, label, changes, expected, mode):
    import json
    (site.status_dir / ('%s.json' % MASTER)).write_text(json.dumps(status_document(**changes)))
    result = site.run('--', MASTER, mode)
    assert result.code == 3, result.output
    (line,) = result.out.splitlines()
    assert line.startswith('VMBACKUP UNKNOWN - ') and expected in line, line
    assert 'Traceback' not in result.output


PYTHON36 = '/root/.pyenv/versions/3.6.15/bin/python3.6'


@pytest.mark.parametrize('python', [PYTHON, PYTHON36], ids=['this python', 'python 3.6'])
def test_status_of_a_vm_named_cafe_prints_in_the_c_locale(site, python):
    import json
    if not os.path.exists(python):
        pytest.skip('no %s here (el-notes.md: pyenv has it)' % python)
    document = status_document(vms=[{'name': 'café', 'outcome': 'backed up', 'disks': []}])
    (site.status_dir / ('%s.json' % MASTER)).write_text(json.dumps(document))
    env = {key: value for key, value in site.env().items()
           if not key.startswith(('LC_', 'PYTHON')) and key != 'LANG'}
    env.update(LC_ALL='C', PYTHONCOERCECLOCALE='0', PYTHONUTF8='0')
    process = subprocess.run([python, str(VMBACKUP), MASTER, '--status', '-c', site.config()],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=60)
    out, err = process.stdout.decode('ascii'), process.stderr.decode('ascii')
    assert process.returncode == 0, out + err
    assert 'VM caf\\xe9: backed up' in out
    assert 'Traceback' not in err


@needs_root
@pytest.mark.parametrize('size', ['"abc"', '[1]', str(10 ** 15)],
                         ids=['text', 'a list', 'more than the volume holds'])
def test_verify_of_an_ovf_store_whose_size_is_wrong_is_one_line_and_exit_1(site, size):
    import re
    from test_remote_copy import backed_up, volume
    backed_up(site)
    changed = 0
    for disk_id, volume_id in site.engine.ovf_stores(site.sd_id):
        path = volume(site, site.slave, disk_id, volume_id, '.meta')
        if os.path.exists(path):
            text = open(path).read()
            new = re.sub(r'"Size":\d+', '"Size":' + size, text)
            changed += new != text
            with open(path, 'w') as meta:
                meta.write(new)
    assert changed
    result = site.run('--verify')
    assert result.code == 1, result.output
    assert 'Traceback' not in result.output
    assert 'OVF store: no written OVF store found' in result.err
    why = ('its .meta says %s' % size if size.isdigit()
           else 'its .meta gives Size %s, not a number of bytes' % size)
    assert any(' WARNING ' in l and why in l for l in result.err.splitlines()), result.err
    assert_invariants(site, result)
