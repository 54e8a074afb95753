"""Restore points as pure decisions: which snapshots are ours, which go,
what the remote command line is, gluster's XML read, --check's state."""
import calendar
import shlex
import subprocess
import xml.etree.ElementTree as ElementTree

import pytest

import vmbackup
from vmbackup import DiskRecord, GlusterSnapshot, Settings, VmBackup

NOW = 1800000000.0
HOUR = 3600.0
VOL = 'vmstore-dr'


def snapshot(name, created, origin=VOL):
    return GlusterSnapshot(name=name, created_at=created, origin=origin)


def ours(hours_ago):
    created = NOW - hours_ago * HOUR
    return snapshot(vmbackup.restore_point_name(VOL, created), created)


# ------------------------------------------------------------ ours, and which go

@pytest.mark.parametrize('name, is_ours', [
    ('vmbackup-vmstore-dr-20261206T013002Z', True),
    ('vmbackup-vmstore-dr-before-upgrade', False),
    ('vmbackup-vmstore-dr-20261206T013002Z_GMT-2026.12.06-01.30.02', False),
    ('vmbackup-vmstore-dr-old-20261206T013002Z', False),     # volume vmstore-dr-old's
    ('vmbackup-vmstore-20261206T013002Z', False),
    ('vmbackup-vmstore-dr-20261206T013002Z\n', False),
    ('before-upgrade', False),
])
def test_only_a_name_the_tool_gives_this_volume_is_ours(name, is_ours):
    assert vmbackup.is_our_restore_point(name, VOL) is is_ours


def test_the_name_is_the_volume_and_the_utc_second():
    epoch = calendar.timegm((2026, 12, 6, 1, 30, 2)) + 0.9
    assert vmbackup.restore_point_name(VOL, epoch) == \
        'vmbackup-vmstore-dr-20261206T013002Z'


def test_beyond_keep_go_the_oldest_of_ours_first_and_never_anyone_elses():
    admins = snapshot('before-upgrade', NOW - 100 * HOUR)
    elsewhere = snapshot(vmbackup.restore_point_name(VOL, NOW - 90 * HOUR),
                         NOW - 90 * HOUR, origin='other')
    points = [ours(72), ours(1), ours(48), ours(24)]
    kept, beyond = vmbackup.restore_points_beyond(
        [admins, elsewhere] + points, VOL, 2)
    assert [s.name for s in kept] == [points[1].name, points[3].name]
    assert [s.name for s in beyond] == [points[0].name, points[2].name]


def test_newest_is_by_creation_time_then_name():
    future_name = snapshot('vmbackup-vmstore-dr-20991231T235959Z', NOW - 48 * HOUR)
    late = ours(1)
    kept, beyond = vmbackup.restore_points_beyond([future_name, late], VOL, 1)
    assert (kept, beyond) == ([late], [future_name])
    same_second = [snapshot('vmbackup-vmstore-dr-20261206T013002Z', NOW),
                   snapshot('vmbackup-vmstore-dr-20261206T013003Z', NOW)]
    kept, _ = vmbackup.restore_points_beyond(same_second, VOL, 1)
    assert kept == [same_second[1]]


def test_keep_more_than_there_are_deletes_nothing():
    points = [ours(1), ours(2)]
    assert vmbackup.restore_points_beyond(points, VOL, 5) == (points, [])


def disk(verified=True, **values):
    fields = dict(disk_id='d', sd_id='sd', base_id='b', overlay_id='o',
                  confirmed=True, overlay_dropped=True, chain_repaired=True,
                  verified=verified)
    fields.update(values)
    return DiskRecord(**fields)


@pytest.mark.parametrize('backups, failures, partial, why', [
    ([VmBackup(snapshot_ready=True, disks=[disk(), disk()])], [], False, None),
    ([VmBackup(snapshot_ready=True, disks=[disk()])], ['x'], False, 'the run failed'),
    ([VmBackup(snapshot_ready=True, disks=[disk()])], [], True, '--vm or --exclude'),
    ([VmBackup(snapshot_ready=True, disks=[disk(), disk(verified=None)])], [], False,
     '1 of 2 disks were not verified'),
    ([VmBackup(snapshot_ready=True, disks=[disk(problem='torn')])], [], False,
     '1 of 1 disks were not verified'),
    ([VmBackup(snapshot_ready=False, disks=[disk()])], [], False, 'a VM was not snapshotted'),
    ([], [], False, 'no disk was backed up'),
])
def test_a_restore_point_is_due_only_when_every_disk_was_verified_in_full(
        backups, failures, partial, why):
    said = vmbackup.restore_point_refused(backups, failures, partial)
    assert (said is None) if why is None else (why in said), said


# ---------------------------------------------------------- the remote command

NASTY = 'it\'s "done"; $(touch /tmp/pwned) `id` & ok\\ \t100%'


def test_the_remote_command_is_one_word_that_a_posix_shell_splits_back_exactly():
    settings = Settings(restore_ssh=['ssh', '-o', 'BatchMode=yes'],
                        restore_gluster=['/usr/sbin/gluster'])
    words = ['snapshot', 'create', 'n', VOL, 'no-timestamp', 'description', NASTY]
    command = vmbackup.remote_gluster_command(settings, 'root@dr', words)
    assert command[:4] == ['ssh', '-o', 'BatchMode=yes', 'root@dr']
    assert len(command) == 5
    assert shlex.split(command[4]) == ['/usr/sbin/gluster', '--mode=script'] + words
    # and sh itself agrees, word for word
    echoed = subprocess.run(['sh', '-c', 'printf "%s\\0" ' + command[4].split(' ', 1)[1]],
                            stdout=subprocess.PIPE, check=True).stdout
    assert echoed.decode().split('\0')[:-1] == ['--mode=script'] + words


def test_the_event_text_is_cut_to_what_gluster_keeps_of_a_description():
    assert vmbackup.RESTORE_POINT_DESCRIPTION_LIMIT < 1024


# ------------------------------------------------------------------- gluster's XML

# as cli/src/cli-xml-output.c writes `snapshot info volume VOL --xml`
BY_VOLUME = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<cliOutput><opRet>0</opRet><opErrno>0</opErrno><opErrstr/><snapInfo>
<originVolume><name>vmstore-dr</name><snapCount>2</snapCount><snapRemaining>254</snapRemaining></originVolume>
<count>2</count><snapshots>
<snapshot><name>vmbackup-vmstore-dr-20261206T013002Z</name><uuid>u1</uuid>
<description>Successfully backed up</description><createTime>2026-12-06 01:30:05</createTime>
<volCount>1</volCount><snapVolume><name>0a1b</name><status>Stopped</status></snapVolume></snapshot>
<snapshot><name>before-upgrade</name><uuid>u2</uuid><description></description>
<createTime>2026-11-01 08:00:00</createTime><volCount>1</volCount>
<snapVolume><name>0c1d</name><status>Started</status></snapVolume></snapshot>
</snapshots></snapInfo></cliOutput>"""

# `snapshot info NAME --xml`: the origin inside each snapVolume
BY_NAME = """<cliOutput><opRet>0</opRet><opErrno>0</opErrno><opErrstr/><snapInfo>
<count>1</count><snapshots><snapshot><name>theirs</name><uuid>u3</uuid><description/>
<createTime>2026-12-06 01:30:05</createTime><volCount>1</volCount><snapVolume>
<name>0e1f</name><status>Stopped</status><originVolume><name>other</name>
<snapCount>1</snapCount><snapRemaining>255</snapRemaining></originVolume></snapVolume>
</snapshot></snapshots></snapInfo></cliOutput>"""


def test_snapshot_info_by_volume_gives_names_utc_times_status_and_origin():
    found = vmbackup.parse_snapshot_info(ElementTree.fromstring(BY_VOLUME))
    assert [(s.name, s.created_at, s.status, s.origin) for s in found] == [
        ('vmbackup-vmstore-dr-20261206T013002Z',
         calendar.timegm((2026, 12, 6, 1, 30, 5)), 'Stopped', VOL),
        ('before-upgrade', calendar.timegm((2026, 11, 1, 8, 0, 0)), 'Started', VOL)]
    assert found[0].description == 'Successfully backed up'


def test_snapshot_info_by_name_takes_the_origin_from_the_snapshot_volume():
    (found,) = vmbackup.parse_snapshot_info(ElementTree.fromstring(BY_NAME))
    assert (found.name, found.origin) == ('theirs', 'other')


@pytest.mark.parametrize('text', [
    '<cliOutput><opRet>0</opRet></cliOutput>',
    BY_VOLUME.replace('2026-12-06 01:30:05', 'yesterday'),
    BY_VOLUME.replace('<name>before-upgrade</name>', ''),
])
def test_snapshot_info_that_is_not_glusters_is_refused(text):
    with pytest.raises(ValueError):
        vmbackup.parse_snapshot_info(ElementTree.fromstring(text))


# ---------------------------------------------------------------- --check's state

def points(hours_ago=None, count=1):
    return {'volume': VOL, 'host': 'root@dr', 'count': count,
            'newest': 'n' if hours_ago is not None else None,
            'newest_created_at': NOW - hours_ago * HOUR if hours_ago is not None else None}


@pytest.mark.parametrize('record, keep, warning, critical, state, text', [
    (points(3), 2, 25, 49, vmbackup.CHECK_OK, 'newest restore point 3.0 hours ago (1 kept)'),
    (points(30), 2, 25, 49, vmbackup.CHECK_WARNING, 'older than 25 hours'),
    (points(50), 2, 25, 49, vmbackup.CHECK_CRITICAL, 'older than 49 hours'),
    (points(3), 2, 1, 2, vmbackup.CHECK_CRITICAL, 'older than 2 hours'),
    (points(30), 2, 40, 80, vmbackup.CHECK_OK, '(1 kept)'),
    (points(count=0), 2, 25, 49, vmbackup.CHECK_CRITICAL, 'no restore point of ours'),
    (None, 2, 25, 49, vmbackup.CHECK_CRITICAL, 'no restore point known'),
    (points(count=None), 2, 25, 49, vmbackup.CHECK_CRITICAL, 'no restore point known'),
])
def test_the_check_of_the_newest_restore_point_follows_its_own_thresholds(
        record, keep, warning, critical, state, text):
    got, said, perfdata = vmbackup.restore_point_state(record, keep, NOW, warning,
                                                       critical)
    assert got == state, said
    assert text in said
    assert perfdata.startswith('restore_point_age=')
    assert ' restore_points=' in perfdata


def test_with_keep_0_the_check_leaves_restore_points_alone():
    assert vmbackup.restore_point_state(None, 0, NOW, 25, 49) is None


def test_the_worse_state_wins():
    worse = vmbackup.worse_state
    assert worse(vmbackup.CHECK_OK, vmbackup.CHECK_WARNING) == vmbackup.CHECK_WARNING
    assert worse(vmbackup.CHECK_CRITICAL, vmbackup.CHECK_WARNING) == vmbackup.CHECK_CRITICAL
    assert worse(vmbackup.CHECK_UNKNOWN, vmbackup.CHECK_OK) == vmbackup.CHECK_UNKNOWN
    assert worse(vmbackup.CHECK_UNKNOWN, vmbackup.CHECK_WARNING) == vmbackup.CHECK_WARNING


# --------------------------------------------------------------------- the config

def read(tmp_path, text):
    path = tmp_path / 'backup.cfg'
    path.write_text(text)
    path.chmod(0o600)
    return vmbackup.read_config(str(path), needs_engine=False)


def test_the_restore_points_keys_and_their_defaults(tmp_path):
    settings = read(tmp_path, '[status]\ndir = %s\n' % tmp_path)
    assert (settings.restore_keep, settings.restore_ssh, settings.restore_host,
            settings.restore_gluster) == (0, ['ssh', '-o', 'BatchMode=yes'], None,
                                          ['gluster'])
    settings = read(tmp_path, '[status]\ndir = %s\n[restore_points]\nkeep = 7\n'
                    'ssh = ssh -i "/root/.ssh/dr key" -p 2222\nhost = admin@dr2\n'
                    'gluster = env LC_ALL=C /usr/sbin/gluster\n' % tmp_path)
    assert settings.restore_keep == 7
    assert settings.restore_ssh == ['ssh', '-i', '/root/.ssh/dr key', '-p', '2222']
    assert settings.restore_host == 'admin@dr2'
    assert settings.restore_gluster == ['env', 'LC_ALL=C', '/usr/sbin/gluster']


def test_gluster_is_asked_on_slave_with_its_user_unless_a_host_is_configured():
    import types
    args = types.SimpleNamespace(slave='geoaccount@dr1')
    assert vmbackup.restore_point_host(args, Settings()) == 'geoaccount@dr1'
    assert vmbackup.restore_point_host(args, Settings(restore_host='root@dr2')) == 'root@dr2'
