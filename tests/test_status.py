"""Issue 11: the status file, the metrics, the ping, --status and --check,
through the real script against the fake engine and fake gluster."""
import json
import os
import re
import stat
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.site import (MASTER, PASSWORD, SLAVE, SLAVE_HOST, VMBACKUP, Result,
                          assert_invariants, needs_root)
from support.ping_server import closed_port_url, hanging_ping_server, ping_server  # noqa: F401

HOUR = 3600


def status_of(site):
    return json.loads((site.status_dir / ('%s.json' % MASTER)).read_text())


def metrics_of(directory):
    text = (directory / ('vmbackup_%s.prom' % MASTER)).read_text()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if set(sample.labels) == {'volume'}:
                assert sample.labels['volume'] == MASTER
                values[sample.name] = sample.value
    return values


def check(site, *args, config=None):
    """Run --check (or --status with '--status' in args)."""
    mode = () if '--status' in args else ('--check',)
    return site.run('--', MASTER, *mode, *args, config=config)


def monitored_config(site, textfile_dir=None, ping_url=None, **sections):
    status = {'dir': str(site.status_dir)}
    if textfile_dir is not None:
        status['textfile_dir'] = str(textfile_dir)
    if ping_url is not None:
        status['ping_url'] = ping_url
        status['ping_timeout'] = '1'
    return site.config(status=status, **sections)


def pings(server):
    return [(ping['path'].rsplit('/', 1)[-1]) for ping in server.pings]


@needs_root
def test_a_successful_run_is_told_by_the_status_file_the_metrics_and_the_pings(
        site, ping_server, tmp_path):
    site.add_vm('web', disks=2)
    site.add_vm('db')
    textfiles = tmp_path / 'textfiles'
    textfiles.mkdir()
    result = site.run(config=monitored_config(site, textfiles, ping_server.url))
    assert result.code == 0, result.output
    assert_invariants(site, result)

    status = status_of(site)
    assert status['version'] == 1
    assert (status['volume'], status['exit_status'], status['succeeded']) == (MASTER, 0, True)
    assert status['failures'] == []
    assert status['node'] == os.uname().nodename
    assert status['started_at'] <= status['ended_at']
    assert status['last_success']['ended_at'] == status['ended_at']
    assert sorted(vm['name'] for vm in status['vms']) == ['db', 'web']
    web = [vm for vm in status['vms'] if vm['name'] == 'web'][0]
    assert sorted(disk['id'] for disk in web['disks']) == sorted(
        disk['id'] for disk in site.engine.vm('web')['disks'])
    assert all(vm['snapshot'] and vm['snapshot_ready'] for vm in status['vms'])
    assert (status['totals']['vms'], status['totals']['disks']) == (2, 3)

    metrics = metrics_of(textfiles)
    assert metrics['vmbackup_last_run_exit_status'] == 0
    assert metrics['vmbackup_last_run_timestamp_seconds'] == status['ended_at']
    assert metrics['vmbackup_last_success_timestamp_seconds'] == status['ended_at']
    assert metrics['vmbackup_last_run_vms'] == 2 and metrics['vmbackup_last_run_disks'] == 3
    assert [name for name in os.listdir(str(textfiles))] == ['vmbackup_%s.prom' % MASTER]

    assert pings(ping_server) == ['start', '0b4b-secret-uuid']
    body = ping_server.pings[1]['body']
    assert 'backup of volume %s' % MASTER in body and 'succeeded' in body
    assert '0b4b-secret-uuid' not in result.output     # the ping URL's secret

    # the summary at the end of the log
    assert re.search(r'summary: 2 VMs: ', result.err)
    assert 'summary: status: written to %s' % (site.status_dir / 'vmstore.json') in result.err

    check_result = check(site)
    assert check_result.code == 0, check_result.output
    assert check_result.out.startswith('VMBACKUP OK - last success ')
    assert '|age=' in check_result.out and 'vms=2;;;0' in check_result.out


@needs_root
def test_the_status_file_and_the_summary_give_the_time_of_each_step(site):
    site.add_vm('web')
    result = site.run()
    assert result.code == 0, result.output
    steps = status_of(site)['steps']
    assert steps and all(seconds >= 0 for seconds in steps.values())
    assert re.search(r'summary: time per step: ', result.err)


@needs_root
def test_after_a_successful_run_every_disk_counts_as_backed_up_and_verified(site):
    site.add_vm('web', disks=2)
    result = site.run()
    assert result.code == 0, result.output
    totals = status_of(site)['totals']
    assert (totals['disks_backed_up'], totals['disks_verified']) == (2, 2)
    assert totals['bytes_backed_up'] > 0


@needs_root
def test_a_failed_run_keeps_the_last_success_pings_fail_and_the_check_is_critical(
        site, ping_server, tmp_path):
    site.add_vm('web')
    textfiles = tmp_path / 'textfiles'
    textfiles.mkdir()
    config = monitored_config(site, textfiles, ping_server.url)
    assert site.run(config=config).code == 0
    success = status_of(site)['last_success']

    site.behave(schedule_georep={'exit': 1})
    result = site.run('-t', '5', config=config)
    assert result.code == 1
    assert_invariants(site, result)
    status = status_of(site)
    assert (status['exit_status'], status['succeeded']) == (1, False)
    assert any('checkpoint was not reached' in f for f in status['failures'])
    assert status['last_success'] == success
    assert status['ended_at'] > success['ended_at']
    metrics = metrics_of(textfiles)
    assert metrics['vmbackup_last_run_exit_status'] == 1
    assert metrics['vmbackup_last_run_failures'] == len(status['failures'])
    assert metrics['vmbackup_last_success_timestamp_seconds'] == success['ended_at']
    assert pings(ping_server) == ['start', '0b4b-secret-uuid', 'start', 'fail']
    assert 'checkpoint was not reached' in ping_server.pings[3]['body']
    assert 'summary: backup of volume vmstore on %s FAILED' % os.uname().nodename \
        in result.err

    check_result = check(site)
    assert check_result.code == 2, check_result.output
    assert check_result.out.startswith('VMBACKUP CRITICAL - last run ')
    assert 'FAILED: geo-replication failed' in check_result.out

    shown = check(site, '--status')
    assert shown.code == 2
    assert shown.out.startswith('Volume vmstore: the last run FAILED (exit status 1).')
    assert 'failed: geo-replication failed' in shown.out
    assert 'VM web: ' in shown.out and 'last success: ' in shown.out


@needs_root
def test_an_unreachable_engine_still_leaves_a_failed_status_and_a_fail_ping(
        site, ping_server):
    site.add_vm('web')
    config = monitored_config(site, ping_url=ping_server.url, connection={
        'server': closed_port_url().replace('http:', 'https:').rsplit('/', 1)[0]
        + '/ovirt-engine/api'})
    result = site.run(config=config)
    assert result.code == 1
    assert 'Traceback' not in result.output
    status = status_of(site)
    assert status['exit_status'] == 1
    assert any('cannot reach the engine' in f for f in status['failures'])
    assert status['vms'] == [] and status['last_success'] is None
    assert pings(ping_server) == ['start', 'fail']


@needs_root
@needs_root
def test_missing_status_and_metrics_directories_are_made_at_the_start(site):
    # else the status is lost at the end of the run, and the metrics the
    # last success with it
    site.add_vm('web')
    status_dir = site.tmp / 'new' / 'status'
    textfile_dir = site.tmp / 'new' / 'metrics'
    command = ['sh', '-c', 'umask 077 && exec "$@"', 'sh'] + site.command(
        config=site.config(status={'dir': str(status_dir), 'textfile_dir': str(textfile_dir)}))
    process = subprocess.run(command, env=site.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    result = Result(process.returncode, process.stdout, process.stderr)
    assert result.code == 0, result.output
    for directory in (status_dir, textfile_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert json.loads((status_dir / ('%s.json' % MASTER)).read_text())['succeeded']
    assert metrics_of(textfile_dir)['vmbackup_last_run_exit_status'] == 0


def test_a_run_that_finds_the_lock_held_leaves_the_status_alone_and_sends_no_ping(
        site, ping_server):
    site.add_vm('web')
    path = site.status_dir / ('%s.json' % MASTER)
    path.write_text('the live run will write this\n')
    with site.hold_lock():
        result = site.run(config=monitored_config(site, ping_url=ping_server.url))
    assert result.code == 3
    assert path.read_text() == 'the live run will write this\n'
    assert ping_server.pings == []


@needs_root
def test_a_dry_run_writes_no_status_and_sends_no_ping(site, ping_server):
    site.add_vm('web')
    result = site.run('--dry-run', config=monitored_config(site, ping_url=ping_server.url))
    assert result.code == 0
    assert list(site.status_dir.iterdir()) == []
    assert ping_server.pings == []


@needs_root
def test_a_hanging_ping_url_costs_at_most_its_timeout_and_the_run_succeeds(
        site, hanging_ping_server):
    site.add_vm('web')
    result = site.run(config=monitored_config(site, ping_url=hanging_ping_server.url))
    assert result.code == 0, result.output
    assert_invariants(site, result)
    # one attempt per ping, and the run went on after the first one hung
    assert pings(hanging_ping_server) == ['start', '0b4b-secret-uuid']
    warnings = [line for line in result.err.splitlines() if ' WARNING ' in line]
    assert len(warnings) == 2, result.err
    assert all(line.endswith('to http://127.0.0.1 failed: no answer within 1 seconds '
                             '([status] ping_timeout)') for line in warnings)
    assert status_of(site)['exit_status'] == 0
    assert 'secret' not in result.output


@needs_root
def test_a_refused_ping_is_a_warning_and_the_run_succeeds(site):
    site.add_vm('web')
    result = site.run(config=monitored_config(site, ping_url=closed_port_url()))
    assert result.code == 0, result.output
    warnings = [line for line in result.err.splitlines() if ' WARNING ' in line]
    assert len(warnings) == 2 and all('refused' in line for line in warnings), result.err
    assert 'secret' not in result.output


@needs_root
def test_a_status_file_that_cannot_be_written_is_an_error_line_not_a_failed_backup(
        site, ping_server):
    site.add_vm('web')
    (site.status_dir / ('%s.json' % MASTER)).mkdir()    # in the way of the rename
    result = site.run('-q', config=monitored_config(site, ping_url=ping_server.url))
    assert result.code == 0, result.output
    # under -q: the previous file can't be read (a warning), nor the new one
    # written (the error that cron mails); nothing else
    warning, error = result.err.splitlines()
    assert 'WARNING previous status: cannot read' in warning
    assert 'ERROR the status file of volume vmstore was not written' in error
    assert [p for p in os.listdir(str(site.status_dir))] == ['%s.json' % MASTER]
    assert 'Status: NOT written' in ping_server.pings[-1]['body']


# -- --check and --status alone: no engine, no lock, no slave ---------------------

def write_status(site, ended_ago, success_ago, exit_status=0, failures=()):
    import time
    now = time.time()
    document = {
        'version': 1, 'volume': MASTER, 'slave': 'root@dr', 'slave_volume': 'dr',
        'node': 'gluster2', 'pid': 1, 'vmbackup_version': 'x',
        'started_at': now - ended_ago - 60, 'ended_at': now - ended_ago,
        'duration_seconds': 60.0, 'exit_status': exit_status,
        'succeeded': exit_status == 0, 'failures': list(failures), 'steps': {},
        'totals': {'vms': 1, 'vms_backed_up': 1, 'disks': 2, 'disks_backed_up': 2,
                   'disks_verified': 2, 'bytes_backed_up': 0, 'bytes_verified': 0,
                   'snapshots_left': 0},
        'vms': [], 'last_success': None if success_ago is None else {
            'ended_at': now - success_ago, 'node': 'gluster2'}}
    (site.status_dir / ('%s.json' % MASTER)).write_text(json.dumps(document))


@pytest.mark.parametrize('ended, success, exit_status, args, state', [
    (2 * HOUR, 2 * HOUR, 0, (), 'OK'),
    (30 * HOUR, 30 * HOUR, 0, (), 'WARNING'),
    (3 * HOUR, 3 * HOUR, 0, ('--warning', '1', '--critical', '2'), 'CRITICAL'),
    (60 * HOUR, 60 * HOUR, 0, (), 'CRITICAL'),
    (1 * HOUR, 20 * HOUR, 1, (), 'CRITICAL'),
    (1 * HOUR, None, 1, (), 'CRITICAL'),
], ids=['fresh', 'older than warning', 'older than a given critical', 'older than critical',
        'last run failed', 'never succeeded'])
def test_the_check_speaks_nagios(site, ended, success, exit_status, args, state):
    write_status(site, ended, success, exit_status,
                 ['VM db: the snapshot failed'] if exit_status else [])
    # a config with no [connection]: the check never needs the engine
    config = site.config(text='[status]\ndir = %s\n' % site.status_dir, name='check.cfg')
    result = check(site, *args, config=config)
    codes = {'OK': 0, 'WARNING': 1, 'CRITICAL': 2, 'UNKNOWN': 3}
    assert result.code == codes[state], result.output
    (line,) = result.out.splitlines()
    assert line.startswith('VMBACKUP %s - ' % state)
    assert re.search(r'\|age=(\d+s|U);\d+;\d+;0 duration=60s;;;0 vms=1;;;0 disks=2;;;0 '
                     r'failures=\d;;;0$', line), line
    assert site.engine.requests == [] and site.calls() == []
    assert os.listdir(str(site.lock_dir)) == []


@pytest.mark.parametrize('ended, success, said', [
    (-5 * HOUR, -5 * HOUR, 'the last run ended at'),
    (1 * HOUR, -3 * HOUR, 'the last success ended at'),
], ids=['last run in the future', 'last success in the future'])
def test_a_time_in_the_future_is_unknown_not_ok(site, ended, success, said):
    # a node's clock ahead would give a negative age: OK for ever
    write_status(site, ended, success)
    for mode in ((), ('--status',)):
        result = check(site, *mode)
        assert result.code == 3, result.output
        line = result.out.splitlines()[0]
        assert line.startswith('VMBACKUP UNKNOWN - %s' % said) and 'in the future' in line
        assert 'check the clocks of gluster2' in line


@pytest.mark.parametrize('content', [None, '{"version": 1, "ended_at"', '{"version": 7}'],
                         ids=['no file', 'garbled', 'newer version'])
def test_the_check_is_unknown_without_a_readable_status_file(site, content):
    if content is not None:
        (site.status_dir / ('%s.json' % MASTER)).write_text(content)
    result = check(site)
    assert result.code == 3, result.output
    (line,) = result.out.splitlines()
    assert line.startswith('VMBACKUP UNKNOWN - ')
    assert str(site.status_dir / 'vmstore.json') in line
    assert 'Traceback' not in result.output


def test_a_bad_check_command_line_is_unknown_not_critical(site):
    result = check(site, '--warning', '50', '--critical', '10')
    assert result.code == 3
    assert result.out.startswith('VMBACKUP UNKNOWN - --warning and --critical are hours')


def test_status_without_a_status_file_says_so(site):
    result = check(site, '--status')
    assert result.code == 3
    assert 'no status file' in result.out
    assert PASSWORD not in result.output


def test_check_needs_no_slave_arguments_but_a_backup_does(tmp_path):
    process = subprocess.run([sys.executable, str(VMBACKUP), MASTER, '-c', 'x'],
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 2
    assert 'SLAVE and SLAVEVOL are needed' in process.stderr


@needs_root
def test_a_partial_run_is_no_last_success_for_the_check(site):
    site.add_vm('web')
    site.add_vm('db')
    assert site.run('--vm', 'web').code == 0
    result = check(site)
    assert result.code == 2, result.output
    assert 'no successful run known' in result.out
    assert status_of(site)['full_run'] is False


@needs_root
def test_check_and_status_take_the_session_where_a_volume_has_two(site):
    site.add_vm('web')
    (site.root / 'volumes' / 'vmstore-dr2').mkdir()
    good = '%s %s::vmstore-dr' % (MASTER, SLAVE_HOST)
    site.behave(gluster={'sessions': [good]})
    assert site.run().code == 0
    # (the session's names come before --check: argparse takes positionals
    # in one run) the second session is missing: that run fails
    failed = site.run('--', MASTER, SLAVE, 'vmstore-dr2')
    assert failed.code == 1, failed.output
    unnamed = check(site)
    assert unnamed.code == 3, unnamed.output
    assert 'has 2 geo-replication sessions' in unnamed.out
    assert 'backup.example.com::vmstore-dr, backup.example.com::vmstore-dr2' in unnamed.out
    first = site.run('--', MASTER, SLAVE, 'vmstore-dr', '--check')
    assert first.code == 0, first.output
    assert first.out.startswith('VMBACKUP OK - last success')
    second = site.run('--', MASTER, SLAVE, 'vmstore-dr2', '--check')
    assert second.code == 2, second.output
    assert 'FAILED' in second.out
    status = site.run('--', MASTER, SLAVE, 'vmstore-dr2', '--status')
    assert 'Volume vmstore -> backup.example.com::vmstore-dr2: the last run FAILED' \
        in status.out
    unknown = site.run('--', MASTER, SLAVE, 'elsewhere', '--check')
    assert unknown.code == 3 and 'no run of vmstore -> backup.example.com::elsewhere' \
        in unknown.out
    half = site.run('--', MASTER, SLAVE, '--check')
    assert half.code == 3 and 'SLAVE and SLAVEVOL both' in half.out
