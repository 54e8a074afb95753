"""Gluster's CLI on a slave node over ssh, for the restore points: what
remote_gluster and remote_gluster_xml make of each answer, and
take_restore_point's create, listing and deletion beyond keep. ssh and
gluster are the fakes of tests/fakebin (their docstrings cite OpenSSH's
ssh.c and GlusterFS 10.3's cli and glusterd), run by this process."""
import argparse
import json
import logging
import os
import sys
import time

import pytest

import vmbackup
from vmbackup import DiskRecord, Plan, VmBackup

FAKEBIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'fakebin')
HOST, SLAVEVOL = 'root@dr.example.com', 'vmstore-dr'


@pytest.fixture
def slave(tmp_path, monkeypatch):
    """The fake slave node: its volume, and the settings that reach it."""
    (tmp_path / 'volumes' / SLAVEVOL).mkdir(parents=True)
    monkeypatch.setenv('FAKE_GLUSTER_ROOT', str(tmp_path))
    monkeypatch.setenv('PATH', FAKEBIN + os.pathsep + os.environ['PATH'])
    return tmp_path


def settings(**values):
    return vmbackup.Settings(restore_ssh=[sys.executable, os.path.join(FAKEBIN, 'ssh'),
                                          '-o', 'BatchMode=yes'],
                             restore_gluster=['gluster'], **values)


def behave(root, **behaviour):
    (root / 'behaviour.json').write_text(json.dumps(behaviour))


def remote(words, **values):
    return vmbackup.remote_gluster(settings(**values), HOST, words, vmbackup.Stop())


def remote_xml(words):
    return vmbackup.remote_gluster_xml(settings(), HOST, words, vmbackup.Stop())


def test_a_command_that_succeeds_gives_its_output_and_logs_glusters_lines(slave, caplog):
    with caplog.at_level(logging.INFO, logger='vmbackup'):
        problem, output = remote(['snapshot', 'create', 'rp1', SLAVEVOL, 'no-timestamp',
                                  'description', "it's a \"quoted\" text"])
    assert problem is None
    assert 'gluster: snapshot create: success: Snap rp1 created successfully' in caplog.text
    root, problem = remote_xml(['snapshot', 'info', 'rp1'])
    assert problem is None
    (snapshot,) = vmbackup.parse_snapshot_info(root)
    assert (snapshot.name, snapshot.origin, snapshot.description) == (
        'rp1', SLAVEVOL, "it's a \"quoted\" text")
    (call,) = [json.loads(line) for line in (slave / 'calls.jsonl').read_text().splitlines()
               if json.loads(line)['program'] == 'ssh'][:1]
    assert call['host'] == HOST


def test_a_refusal_is_glusters_own_words(slave):
    problem, _ = remote(['snapshot', 'create', 'rp1', 'nosuchvol', 'no-timestamp'])
    assert problem.startswith('gluster snapshot create on %s failed (ssh exited with status '
                              '1): ' % HOST)
    assert 'Volume (nosuchvol) does not exist' in problem
    root, problem = remote_xml(['snapshot', 'delete', 'nosuchsnap'])
    assert root is None
    assert problem == ('gluster snapshot delete on %s failed: Snapshot (nosuchsnap) does not '
                       'exist' % HOST)


@pytest.mark.parametrize('behaviour, said', [
    ({'fail': 'ssh: connect to host dr.example.com port 22: Connection refused'},
     'Connection refused'),
    ({'hosts': ['other.example.com']}, 'Could not resolve hostname'),
])
def test_an_ssh_that_fails_is_its_own_words_and_status_255(slave, behaviour, said):
    behave(slave, ssh=behaviour)
    problem, _ = remote(['snapshot', 'list', SLAVEVOL])
    assert problem.startswith('gluster snapshot list on %s failed (ssh exited with status '
                              '255): ' % HOST)
    assert said in problem
    root, problem = remote_xml(['snapshot', 'info', 'volume', SLAVEVOL])
    assert root is None and said in problem


def test_an_ssh_that_cannot_run_names_the_setting():
    problem, output = vmbackup.remote_gluster(
        vmbackup.Settings(restore_ssh=['/nonexistent/ssh']), HOST, ['snapshot', 'list'],
        vmbackup.Stop())
    assert problem == ('cannot run /nonexistent/ssh ([restore_points] ssh): No such file or '
                       'directory')
    assert output == ''


@pytest.mark.parametrize('script, problem', [
    ('echo hello', 'gluster snapshot info on %s answered no XML: hello' % HOST),
    ('true', 'gluster snapshot info on %s answered no XML: nothing' % HOST),
    ("echo '<other/>'", 'gluster snapshot info on %s answered <other>, not <cliOutput>' % HOST),
])
def test_an_answer_that_is_not_glusters_xml_is_told(slave, script, problem):
    # a "gluster" that answers this instead (the remote shell runs it)
    fake = slave / 'bin' / 'gluster'
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n%s\n' % script)
    fake.chmod(0o755)
    values = settings()
    values.restore_gluster = [str(fake)]
    assert vmbackup.remote_gluster_xml(values, HOST, ['snapshot', 'info', 'rp1'],
                                       vmbackup.Stop()) == (None, problem)


# take_restore_point ------------------------------------------------------------------------

def verified_run(slave, keep, vm=(), failures=()):
    args = argparse.Namespace(mastervol='vmstore', slave=HOST, slavevol=SLAVEVOL,
                              vm=list(vm), exclude=[])
    run = vmbackup.Run(args, settings(restore_keep=keep), vmbackup.Stop())
    disk = DiskRecord(disk_id='d1', confirmed=True, overlay_dropped=True,
                      chain_repaired=True, verified=True)
    run.plan = Plan(backups=[VmBackup(name='web', disks=[disk], snapshot_ready=True)])
    run.failures = list(failures)
    return run


def older(slave, *days):
    """Restore points of ours taken days ago, and one of an administrator's."""
    names = []
    for age in days:
        at = time.time() - age * 86400
        name = vmbackup.restore_point_name(SLAVEVOL, at)
        behave(slave, gluster={'now': at})
        assert remote(['snapshot', 'create', name, SLAVEVOL, 'no-timestamp'])[0] is None
        names.append(name)
    behave(slave, gluster={'now': time.time() - 30 * 86400})
    assert remote(['snapshot', 'create', 'before-upgrade', SLAVEVOL, 'no-timestamp'])[0] is None
    behave(slave)
    return names


def listed(slave):
    root, problem = remote_xml(['snapshot', 'info', 'volume', SLAVEVOL])
    assert problem is None
    return sorted(snapshot.name for snapshot in vmbackup.parse_snapshot_info(root))


def test_a_restore_point_is_taken_and_ours_beyond_keep_deleted_oldest_first(slave, caplog):
    day1, day2, day3 = older(slave, 1, 2, 3)
    run = verified_run(slave, keep=2)
    with caplog.at_level(logging.INFO, logger='vmbackup'):
        points = vmbackup.take_restore_point(run)
    assert run.failures == []
    assert points.host == HOST and points.volume == SLAVEVOL
    assert [s.name for s in points.kept] == [points.taken, day1]
    assert points.deleted == [day3, day2]
    assert listed(slave) == sorted(['before-upgrade', points.taken, day1])
    assert vmbackup.is_our_restore_point(points.taken, SLAVEVOL)
    assert '2 restore points of vmstore-dr kept on %s, newest %s' % (
        HOST, points.taken) in caplog.text


@pytest.mark.parametrize('vm, failures, why', [
    (['web'], [], 'a run with --vm or --exclude'),
    ([], ['VM db: not confirmed'], 'the run failed'),
])
def test_no_restore_point_is_taken_of_a_copy_that_is_not_whole(slave, caplog, vm, failures,
                                                               why):
    run = verified_run(slave, keep=2, vm=vm, failures=failures)
    with caplog.at_level(logging.WARNING, logger='vmbackup'):
        assert vmbackup.take_restore_point(run) is None
    assert listed(slave) == []
    assert 'no restore point taken: ' in caplog.text and run.failures == list(failures)


def test_a_refused_restore_point_fails_the_run_with_glusters_words(slave):
    behave(slave, gluster={'geo_rep_running': [SLAVEVOL]})
    run = verified_run(slave, keep=2)
    assert vmbackup.take_restore_point(run) is None
    (failure,) = run.failures
    assert failure.startswith('no restore point taken of vmstore-dr: gluster snapshot create '
                              'on %s failed' % HOST)
    assert 'geo-replication session is running for the volume vmstore-dr' in failure


def test_keep_0_takes_none(slave):
    assert vmbackup.take_restore_point(verified_run(slave, keep=0)) is None
    assert not (slave / 'calls.jsonl').exists()
