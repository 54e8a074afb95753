"""One backup per volume across the pool: the lock, the preflight before any
snapshot, and every failure reported (issue: the same cron line on every
node)."""
import io
import json
import os
import subprocess
import tarfile
import time

import pytest

import vmbackup

from support.site import (MASTER, PASSWORD, PYTHON, SLAVE, SLAVE_HOST, SLAVEVOL,
                          TESTS, Result, assert_invariants, needs_root, wait_for)

pytestmark = needs_root


def snapshot_posts(engine):
    return [r for r in engine.requests
            if r['method'] == 'POST' and r['path'].endswith('/snapshots')]


def deletes(engine):
    return [r for r in engine.requests if r['method'] == 'DELETE']


def test_a_second_run_under_the_same_lock_exits_3_and_touches_no_snapshot_of_the_first(
        site, stop_process, tmp_path):
    site.add_vm('web')
    gate = tmp_path / 'gate'
    site.behave(schedule_georep={'gate': str(gate)})
    first = site.start('-q')
    stop_process(first)
    wait_for(lambda: site.calls('schedule_georep'), message='the first run to replicate')
    snapshots = site.our_snapshots()
    second = site.run('-q')
    assert second.code == 3, second.output
    assert second.err == '', 'a locked-out node mails nothing under -q: ' + second.err
    assert site.our_snapshots() == snapshots
    assert deletes(site.engine) == []
    gate.touch()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert_invariants(site, Result(first.returncode, out, err))


def test_the_lock_file_says_which_node_and_pid_hold_it(site, stop_process, tmp_path):
    site.add_vm('web')
    gate = tmp_path / 'gate'
    site.behave(schedule_georep={'gate': str(gate)})
    first = site.start()
    stop_process(first)
    wait_for(lambda: site.calls('schedule_georep'), message='the first run to replicate')
    second = site.run()
    assert second.code == 3
    assert 'pid %d on ' % first.pid in second.err
    gate.touch()
    first.communicate(timeout=120)


def test_under_node_local_locks_a_fresh_snapshot_of_another_run_stops_before_any_snapshot(
        site, stop_process, tmp_path):
    site.add_vm('web')
    gate = tmp_path / 'gate'
    site.behave(schedule_georep={'gate': str(gate)})
    first = site.start()
    stop_process(first)
    wait_for(lambda: site.calls('schedule_georep'), message='the first run to replicate')
    snapshots = site.our_snapshots()
    # the second "node" has its own lock directory: it can't see the lock
    other_lock = tmp_path / 'node2-lock'
    other_lock.mkdir()
    second = site.run('-t', '30', config=site.config(
        lock={'lock_dir': str(other_lock)}, name='node2.cfg'))
    assert second.code == 3, second.output
    assert 'a run on another node may own it' in second.err
    # nothing done: the second run writes no status (the first has not yet)
    assert not (site.status_dir / (MASTER + '.json')).exists()
    assert len(snapshot_posts(site.engine)) == 1
    assert site.our_snapshots() == snapshots and deletes(site.engine) == []
    gate.touch()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err


def test_a_run_soon_after_a_success_on_any_node_is_skipped_quietly(site):
    site.add_vm('web')
    config = site.config(lock={'skip_within': '60'})
    first = site.run('-q', config=config)
    assert first.code == 0, first.output
    second = site.run('-q', config=config)
    assert second.code == 3
    assert second.err == ''
    assert len(snapshot_posts(site.engine)) == 1
    loud = site.run(config=config)
    assert 'was backed up' in loud.err and 'skip_within' in loud.err


@pytest.mark.parametrize('positional, named', [
    (['vmstoer', SLAVE, SLAVEVOL], 'vmstoer -> root@%s::%s' % (SLAVE_HOST, SLAVEVOL)),
    ([MASTER, SLAVE, 'vmstore-rd'], '%s -> root@%s::vmstore-rd' % (MASTER, SLAVE_HOST)),
    ([MASTER, 'root@bakcup.example.com', SLAVEVOL],
     '%s -> root@bakcup.example.com::%s' % (MASTER, SLAVEVOL)),
], ids=['mistyped-volume', 'mistyped-slave-volume', 'mistyped-slave-host'])
@pytest.mark.parametrize('dry_run', [False, True], ids=['run', 'dry-run'])
def test_a_mistyped_name_fails_with_zero_snapshots_naming_the_missing_session(
        site, positional, named, dry_run):
    site.add_vm('web')
    result = site.run('--', *positional, *(['--dry-run'] if dry_run else []))
    assert result.code == 1, result.output
    assert snapshot_posts(site.engine) == []
    assert site.calls_but_preflight() == []
    errors = [line for line in result.err.splitlines() if ' ERROR ' in line]
    assert len(errors) == 1, errors
    assert 'no geo-replication session %s' % named in errors[0]


@pytest.mark.parametrize('option', ['--vm', '--exclude'])
def test_a_vm_name_that_matches_no_vm_is_an_error_before_any_snapshot(site, option):
    site.add_vm('web')
    result = site.run(option, 'nosuch')
    assert result.code == 1, result.output
    assert 'no VM is named nosuch (%s)' % option in result.err
    assert snapshot_posts(site.engine) == []


def test_excluding_a_vm_that_exists_but_is_down_is_fine(site):
    site.add_vm('web')
    site.add_vm('old', status='down')
    result = site.run('--exclude', 'old')
    assert result.code == 0, result.output


def test_dry_run_takes_no_lock(site):
    site.add_vm('web')
    with site.hold_lock():
        result = site.run('--dry-run')
    assert result.code == 0, result.output
    assert 'web' in result.out


def test_a_failed_run_under_a_file_only_logging_config_still_says_why_on_stderr(site, tmp_path):
    log_file = tmp_path / 'vmbackup.log'
    logging_conf = tmp_path / 'logging.conf'
    logging_conf.write_text(
        '[loggers]\nkeys=root\n[handlers]\nkeys=file\n[formatters]\nkeys=plain\n'
        '[logger_root]\nlevel=INFO\nhandlers=file\n'
        '[handler_file]\nclass=FileHandler\nformatter=plain\nargs=(%r,)\n'
        '[formatter_plain]\nformat=%%(asctime)s %%(levelname)s %%(message)s\n'
        % str(log_file))
    site.add_vm('web')
    site.behave(schedule_georep={'exit': 1})
    result = site.run('-q', config=site.config(logging={'logger_conf': str(logging_conf)}))
    assert result.code == 1
    assert 'geo-replication failed' in result.err
    assert 'geo-replication failed' in log_file.read_text()


def test_a_good_run_under_a_file_only_logging_config_prints_nothing(site, tmp_path):
    log_file = tmp_path / 'vmbackup.log'
    logging_conf = tmp_path / 'logging.conf'
    logging_conf.write_text(
        '[loggers]\nkeys=root\n[handlers]\nkeys=file\n[formatters]\nkeys=\n'
        '[logger_root]\nlevel=INFO\nhandlers=file\n'
        '[handler_file]\nclass=FileHandler\nargs=(%r,)\n' % str(log_file))
    site.add_vm('web')
    result = site.run(config=site.config(logging={'logger_conf': str(logging_conf)}))
    assert result.code == 0, result.output
    assert result.output == ''
    assert 'done in' in log_file.read_text()


# an error where the run does I/O or meets a bug, after the engine was
# reached: each is one line, an alert, the snapshots removed, exit 1
INJECTED = [
    ('check_session', 'ENOSPC', False),
    ('snapshot_vms', 'EACCES', False),
    ('replicate', 'ENOSPC', True),
    ('write_ovf_stores', 'ENOSPC', False),
    ('confirm_copies', 'EIO', True),
    ('repair_chains', 'ENOSPC', True),
    ('slave_mounted', 'ENOSPC', True),
    ('replicate', 'bug', True),
]


@pytest.mark.parametrize('function, kind, snapshotted', INJECTED,
                         ids=['%s-%s' % (f, k) for f, k, _ in INJECTED])
def test_an_error_injected_in_a_step_is_an_alert_with_the_snapshots_removed(
        site, function, kind, snapshotted):
    site.add_vm('web')
    command = site.command()
    command = [PYTHON, str(TESTS / 'support' / 'inject.py'), function, kind, '--'] + command[2:]
    process = subprocess.run(command, env=site.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True,
                             timeout=120)
    result = Result(process.returncode, process.stdout, process.stderr)
    assert result.code == 1, result.output
    assert_invariants(site, result)
    (event,) = site.engine.events
    assert event['severity'] == 'alert'
    expected = 'unexpected error: KeyError' if kind == 'bug' else os.strerror(
        getattr(__import__('errno'), kind))
    assert expected in event['description']
    assert bool(snapshot_posts(site.engine)) == snapshotted


def test_a_missing_sdk_is_one_line_and_exit_2(site):
    config = site.config()
    code = ('import runpy, sys; sys.modules["ovirtsdk4"] = None; '
            'sys.argv = [%r, %r, %r, %r, "-c", %r]; '
            'runpy.run_path(%r, run_name="__main__")'
            % (str(TESTS.parent / 'vmbackup.py'), MASTER, SLAVE, SLAVEVOL, config,
               str(TESTS.parent / 'vmbackup.py')))
    process = subprocess.run([PYTHON, '-c', code], env=site.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=60)
    assert process.returncode == 2, process.stderr
    assert 'Traceback' not in process.stderr
    (line,) = process.stderr.strip().splitlines()
    assert 'the oVirt engine SDK cannot be imported' in line
    assert PASSWORD not in process.stderr


def add_second_volume(site, name='data'):
    """A second GlusterFS domain, on volume `name`, replicated to
    `name`-dr. Return its domain id."""
    master = site.root / 'volumes' / name
    (site.root / 'volumes' / (name + '-dr')).mkdir(parents=True)
    return site.engine.add_storage_domain('%s-sd' % name, str(master), type='glusterfs',
                                          address='gluster1.example.com', path='/' + name)


def store_at(root, sd_id, engine):
    """{vm name: [(snapshot id, description)]} of the OVF store a DR engine
    would import from the domain at root."""
    store = vmbackup.newest_ovf_store(str(root), sd_id, engine.ovf_stores(sd_id))
    described = {}
    with tarfile.open(fileobj=io.BytesIO(store.data)) as tar:
        for member in tar.getmembers():
            if member.name.endswith('.ovf'):
                vm = vmbackup.parse_ovf(member.name[:-4], tar.extractfile(member).read())
                described[vm.name] = [(sid, text) for sid, _, text in vm.snapshots]
    return described


def test_two_volumes_runs_at_once_with_a_vm_on_both_both_succeed(site, stop_process, tmp_path):
    data_sd = add_second_volume(site)
    site.add_vm('web')
    site.engine.add_vm('db', disks=[dict(sd=data_sd)])
    site.engine.add_vm('shared', disks=[dict(sd=site.sd_id), dict(sd=data_sd)])
    gate = tmp_path / 'gate'
    site.behave(gluster={'sessions': ['%s %s::%s' % (MASTER, SLAVE_HOST, SLAVEVOL),
                                      'data %s::data-dr' % SLAVE_HOST]},
                schedule_georep={'gate': str(gate)})
    # vmstore's run replicates (its snapshot of shared is live) when data's starts
    first = site.start('-t', '30')
    stop_process(first)
    wait_for(lambda: site.calls('schedule_georep'), message="vmstore's run to replicate")
    second = site.start('--', 'data', SLAVE, 'data-dr', '-t', '30')
    stop_process(second)
    wait_for(lambda: len(site.calls('schedule_georep')) == 2 or second.poll() is not None,
             message="data's run to replicate")
    gate.touch()
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert_invariants(site, Result(first.returncode, out1, err1))
    assert 'Traceback' not in err
    # data's run left shared out, with one line saying why
    (line,) = [line for line in err.splitlines() if 'left out of this backup' in line]
    assert 'VM shared' in line and 'volume vmstore' in line
    posted = {site.engine.vm_name_of(p['path'].split('/')[2]): p['body']
              for p in snapshot_posts(site.engine)}
    assert sorted(posted) == ['db', 'shared', 'web']
    assert 'GLUSTER-Geo-rep-snapshot data' in posted['db']
    assert 'GLUSTER-Geo-rep-snapshot vmstore' in posted['shared']
    # the store each run kept at its remote site names no backup snapshot
    data_store = store_at(site.root / 'volumes' / 'data-dr', data_sd, site.engine)
    assert sorted(data_store) == ['db']
    vmstore_store = store_at(site.slave, site.sd_id, site.engine)
    assert sorted(vmstore_store) == ['shared', 'web']
    for snapshots in list(data_store.values()) + list(vmstore_store.values()):
        assert not [text for _, text in snapshots if 'Geo-rep' in text], snapshots
    assert len(deletes(site.engine)) == 3        # each run removed only its own


def test_only_a_full_success_skips_a_full_run_and_nothing_skips_a_partial_or_forced_one(site):
    site.add_vm('web')
    site.add_vm('db')
    config = site.config(lock={'skip_within': '60'})
    steps = [
        (('--vm', 'web'), 0),       # a partial success: does not count...
        ((), 0),                    # ...so the nightly full run goes
        ((), 3),                    # a full success counts
        (('--vm', 'web'), 0),       # a partial run is never skipped
        (('--exclude', 'db'), 0),
        (('--force',), 0),          # --force runs anyway
        ((), 3),
    ]
    for args, code in steps:
        result = site.run('-q', *args, config=config)
        assert result.code == code, (args, result.output)
        if code == 3:
            # every exit 3 is silent under -q: cron mails stdout and stderr
            assert result.out == '' and result.err == '', (args, result.output)
    assert len(snapshot_posts(site.engine)) == 1 + 2 + 1 + 1 + 2


def test_all_vms_counts_as_a_full_run(site):
    site.add_vm('web')
    (site.root / 'volumes' / 'othervol').mkdir()     # a volume no domain uses
    site.behave(gluster={'sessions': ['othervol %s::%s' % (SLAVE_HOST, SLAVEVOL)]})
    config = site.config(lock={'skip_within': '60'})
    first = site.run('--', 'othervol', SLAVE, SLAVEVOL, '-q', '--all-vms', config=config)
    assert first.code == 0, first.output
    second = site.run('--', 'othervol', SLAVE, SLAVEVOL, '-q', '--all-vms', config=config)
    assert second.code == 3 and second.output == ''


def test_a_second_slave_of_the_same_volume_is_not_skipped(site):
    site.add_vm('web')
    (site.root / 'volumes' / 'vmstore-dr2').mkdir()
    site.behave(gluster={'sessions': ['%s %s::%s' % (MASTER, SLAVE_HOST, SLAVEVOL),
                                      '%s %s::vmstore-dr2' % (MASTER, SLAVE_HOST)]})
    config = site.config(lock={'skip_within': '60'})
    assert site.run('-q', config=config).code == 0
    other = site.run('--', MASTER, SLAVE, 'vmstore-dr2', '-q', config=config)
    assert other.code == 0, other.output
    again = site.run('-q', config=config)
    assert again.code == 3 and again.output == ''
    record = json.loads((site.lock_dir / ('vmbackup-%s.lock' % MASTER)).read_text())
    assert sorted(record['sessions']) == ['%s::%s' % (SLAVE_HOST, SLAVEVOL),
                                          '%s::vmstore-dr2' % SLAVE_HOST]


def test_a_lock_record_of_the_previous_version_skips_nothing_and_breaks_nothing(site):
    site.add_vm('web')
    lock = site.lock_dir / ('vmbackup-%s.lock' % MASTER)
    # vmbackup 2.1: one last success for the volume, whatever the session
    # or the VMs of that run
    lock.write_text(json.dumps({'node': 'gluster2', 'pid': 4242, 'started': time.time() - 60,
                                'ended': time.time() - 30, 'exit': 0,
                                'last_success': time.time() - 30,
                                'last_success_node': 'gluster2'}) + '\n')
    config = site.config(lock={'skip_within': '60'})
    first = site.run('-q', config=config)
    assert first.code == 0, first.output
    assert site.run('-q', config=config).code == 3
