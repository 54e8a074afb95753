"""Issue 16: restore points. After a run whose copy was verified in full the
tool snapshots the slave volume on a slave node (gluster's CLI over ssh),
keeps the newest [restore_points] keep of its own and deletes only its own;
--verify --restore-point verifies one; --status, --check, the status file
and the metrics tell the newest. Through the real script, the fake engine,
the fake ssh (tests/fakebin/ssh: runs the remote command here) and the fake
gluster CLI's snapshots (tests/fakebin/_snapshots.py, in gluster's own
formats, with glusterd's refusals)."""
import json
import os
import shlex
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.site import (FAKEBIN, MASTER, SLAVE, SLAVEVOL, assert_invariants,
                          needs_root, tree)

pytestmark = needs_root

KEEP2 = {'keep': '2'}
FAILED = ('Failed to backup gluster volume %s to remote site. Please check '
          'backup log for details' % MASTER)
ADMINS = 'before-upgrade'     # an administrator's own snapshot of the slave volume


# ------------------------------------------------------------------ helpers

def snapshots(site):
    """The fake gluster's snapshots, as its state file holds them."""
    path = site.root / 'snapshots.json'
    return json.loads(path.read_text())['snapshots'] if path.exists() else []


def names(site, volume=SLAVEVOL):
    return sorted(s['name'] for s in snapshots(site) if s['volume'] == volume)


def ours(site):
    return [name for name in names(site) if name.startswith('vmbackup-%s-' % SLAVEVOL)
            and name[-1] == 'Z']


def gluster(site, *words):
    """Run the fake gluster CLI as an administrator would on the slave node."""
    process = subprocess.run([str(FAKEBIN / 'gluster'), '--mode=script', *words],
                             env=site.env(), capture_output=True, text=True)
    assert process.returncode == 0, process.stdout + process.stderr
    return process.stdout


def plant(site, name, created, volume=SLAVEVOL):
    """Put a snapshot in the fake gluster's state as if made at `created`."""
    path = site.root / 'snapshots.json'
    data = json.loads(path.read_text()) if path.exists() else {'snapshots': []}
    data['snapshots'].append(dict(
        name=name, uuid='00000000-0000-4000-8000-%012d' % len(data['snapshots']),
        volume=volume, description='planted', time=int(created),
        status='Stopped', volume_id='0' * 32))
    path.write_text(json.dumps(data))


def stamp(epoch):
    return time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(epoch))


def ssh_calls(site):
    return site.calls('ssh')


def remote_words(call):
    """The words gluster got: what the remote shell makes of ssh's line."""
    return shlex.split(call['remote'])


def status_of(site):
    return json.loads((site.status_dir / ('%s.json' % MASTER)).read_text())


def metrics_of(directory):
    text = (directory / ('vmbackup_%s.prom' % MASTER)).read_text()
    return {sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if set(sample.labels) == {'volume'}}


def config(site, textfiles=None, **restore_points):
    status = {'dir': str(site.status_dir)}
    if textfiles is not None:
        status['textfile_dir'] = str(textfiles)
    return site.config(restore_points=restore_points, status=status)


def the_alert(site):
    event = site.engine.events[-1]
    assert event['severity'] == 'alert', event
    assert event['description'].startswith(FAILED), event
    return event['description']


# ---------------------------------------------------------- keep and delete

def test_three_good_runs_with_keep_2_leave_the_newest_two_of_ours_and_the_administrators_untouched(
        site, tmp_path):
    site.add_vm('web')
    site.engine.add_vm('db', disks=[dict(sd=site.sd_id, format='cow')])
    (tmp_path / 'gluster' / 'volumes' / 'other').mkdir()
    gluster(site, 'snapshot', 'create', ADMINS, SLAVEVOL, 'no-timestamp',
            'description', 'taken by hand')
    # named like ours but not by the tool: not ours
    gluster(site, 'snapshot', 'create', 'vmbackup-%s-manual' % SLAVEVOL, SLAVEVOL,
            'no-timestamp')
    # ours in name, but of another volume
    plant(site, 'vmbackup-%s-%s' % (SLAVEVOL, stamp(time.time() - 86400 * 30)),
          time.time() - 86400 * 30, volume='other')
    textfiles = tmp_path / 'textfiles'
    textfiles.mkdir()
    taken = []
    for night in range(3):
        calls = len(ssh_calls(site))
        result = site.run(config=config(site, textfiles, **KEEP2))
        assert result.code == 0, result.output
        assert_invariants(site, result)
        (create,) = [call for call in ssh_calls(site)[calls:]
                     if remote_words(call)[2:4] == ['snapshot', 'create']]
        words = remote_words(create)
        assert words[5:8] == [SLAVEVOL, 'no-timestamp', 'description']
        taken.append(words[4])
        # gluster got the event's text, whole, as the description
        (snapshot,) = [s for s in snapshots(site) if s['name'] == taken[-1]]
        assert snapshot['description'] == words[8]
        assert words[8].startswith('Successfully backed up gluster volume %s to remote '
                                   'site. Backup completed in ' % MASTER)
        assert words[8].endswith('; 2 disks of 2 VMs verified restorable')
    assert ours(site) == sorted(taken[1:])
    assert sorted(set(names(site)) - set(taken)) == sorted(
        [ADMINS, 'vmbackup-%s-manual' % SLAVEVOL])
    assert len(names(site, 'other')) == 1
    deletes = [remote_words(call) for call in ssh_calls(site)
               if remote_words(call)[2:4] == ['snapshot', 'delete']]
    assert deletes == [['gluster', '--mode=script', 'snapshot', 'delete', taken[0]]]
    # every call: ssh -o BatchMode=yes SLAVE 'gluster --mode=script snapshot ...'
    for call in ssh_calls(site):
        assert call['argv'][:3] == ['-o', 'BatchMode=yes', SLAVE]
        assert len(call['argv']) == 4
        assert remote_words(call)[:2] == ['gluster', '--mode=script']
    # the status file and the metrics
    points = status_of(site)['restore_points']
    assert (points['count'], points['newest'], points['taken']) == (2, taken[2], taken[2])
    assert points['names'] == [taken[2], taken[1]]
    assert points['deleted'] == [taken[0]]
    assert points['volume'] == SLAVEVOL and points['host'] == SLAVE
    (newest,) = [s for s in snapshots(site) if s['name'] == taken[2]]
    assert points['newest_created_at'] == newest['time']
    metrics = metrics_of(textfiles)
    assert metrics['vmbackup_restore_point_timestamp_seconds'] == newest['time']
    assert metrics['vmbackup_restore_points'] == 2


def test_newest_is_by_glusters_creation_time_not_by_name(site):
    site.add_vm('web')
    # ours by name, stamped in the future (a clock that was wrong), taken long ago
    wrong = 'vmbackup-%s-20991231T235959Z' % SLAVEVOL
    plant(site, wrong, time.time() - 86400 * 2)
    result = site.run(config=config(site, keep='1'))
    assert result.code == 0, result.output
    (kept,) = ours(site)
    assert kept != wrong
    assert status_of(site)['restore_points']['deleted'] == [wrong]


def test_the_oldest_of_ours_go_first_and_only_as_many_as_keep_requires(site):
    site.add_vm('web')
    now = time.time()
    planted = ['vmbackup-%s-%s' % (SLAVEVOL, stamp(now - 86400 * days)) for days in (3, 2, 1)]
    for days, name in zip((3, 2, 1), planted):
        plant(site, name, now - 86400 * days)
    result = site.run(config=config(site, keep='3'))
    assert result.code == 0, result.output
    assert ours(site) == sorted(planted[1:] + [status_of(site)['restore_points']['taken']])
    deletes = [remote_words(c)[4] for c in ssh_calls(site) if 'delete' in remote_words(c)]
    assert deletes == [planted[0]]


def test_with_keep_0_no_restore_point_is_taken_and_ssh_never_runs(site, tmp_path):
    site.add_vm('web')
    textfiles = tmp_path / 'textfiles'
    textfiles.mkdir()
    result = site.run(config=config(site, textfiles))
    assert result.code == 0, result.output
    assert ssh_calls(site) == [] and snapshots(site) == []
    assert status_of(site)['restore_points'] is None
    metrics = metrics_of(textfiles)
    assert 'vmbackup_restore_points' not in metrics
    assert 'vmbackup_restore_point_timestamp_seconds' not in metrics
    status = site.run('--', MASTER, '--status', config=config(site, textfiles))
    assert status.code == 0, status.output
    assert ('restore points: none ([restore_points] keep = 0): while a sync runs, '
            'and after a run that failed, the remote copy is inconsistent') in status.out


def fail_a_vms_snapshot(site):
    site.engine.fail('POST', r'^/vms/%s/snapshots$' % site.engine.vm('db')['id'],
                     kind='fault', status=400)


def fail_the_scheduler(site):
    site.behave(schedule_georep={'exit': 1})


def fail_the_verify_of_a_down_vm(site):
    # its disks are not this run's (it is down) but the DR engine would
    # import it: a torn copy of it fails the verify, and the run
    site.engine.add_vm('stopped', status='down', disks=[dict(sd=site.sd_id, format='cow')])
    (disk,) = site.engine.vm('stopped')['disks']
    path = site.master / site.sd_id / 'images' / disk['id'] / disk['image_id']
    with open(str(path), 'r+b') as stream:
        stream.truncate(65536)


FAILURES = [fail_a_vms_snapshot, fail_the_scheduler, fail_the_verify_of_a_down_vm]


@pytest.mark.parametrize('failure', FAILURES, ids=[f.__name__.replace('_', '-')
                                                   for f in FAILURES])
def test_a_failed_run_takes_no_restore_point_and_deletes_none(site, failure):
    site.add_vm('web')
    site.add_vm('db')
    now = time.time()
    for days in (3, 2, 1):
        plant(site, 'vmbackup-%s-%s' % (SLAVEVOL, stamp(now - 86400 * days)),
              now - 86400 * days)
    before = snapshots(site)
    failure(site)
    result = site.run(config=config(site, keep='1'))
    assert result.code == 1, result.output
    assert_invariants(site, result)
    assert snapshots(site) == before
    assert ssh_calls(site) == []
    assert status_of(site)['restore_points']['taken'] is None


def test_a_run_with_vm_takes_no_restore_point(site):
    site.add_vm('web')
    site.add_vm('db')
    result = site.run('--vm', 'web', config=config(site, keep='1'))
    assert result.code == 0, result.output
    assert ssh_calls(site) == [] and snapshots(site) == []
    assert 'no restore point taken: --vm or --exclude left VMs out' in result.err


def test_a_restore_point_stays_when_a_merge_fails_later(site):
    site.add_vm('web')
    site.engine.fail_merge('web', times=10)
    result = site.run(config=config(site, keep='1'))
    assert result.code == 1, result.output
    assert len(ours(site)) == 1
    assert 'snapshot' in the_alert(site)


# ------------------------------------------------------------ the refusals

def no_lvm(site):
    site.behave(gluster={'lvm': False})
    return 'LVM commands not found, snapshot functionality is disabled'


def thin(site):
    site.behave(gluster={'thin_provisioned': False})
    return ('Snapshot is supported only for thin provisioned LV. Ensure that all '
            'bricks of %s are thinly provisioned LV.' % SLAVEVOL)


def geo_replication_running(site):
    site.behave(gluster={'geo_rep_running': [SLAVEVOL]})
    return ('geo-replication session is running for the volume %s. Session needs to '
            'be stopped before taking a snapshot.' % SLAVEVOL)


def hard_limit(site):
    site.behave(gluster={'snap_max_hard_limit': 2})
    plant(site, ADMINS, time.time() - 3600)
    plant(site, 'vmbackup-%s-%s' % (SLAVEVOL, stamp(time.time() - 7200)),
          time.time() - 7200)
    return ('The number of existing snaps has reached the effective maximum limit of 2, '
            'for the volume (%s). Please delete few snapshots before taking further '
            'snapshots.' % SLAVEVOL)


def name_exists(site):
    # every name the run may take within the next minute
    now = int(time.time())
    for second in range(now, now + 60):
        plant(site, 'vmbackup-%s-%s' % (SLAVEVOL, stamp(second)), second - 86400)
    return 'already exists'


def ssh_refused(site):
    site.behave(ssh={'fail': 'ssh: connect to host backup.example.com port 22: '
                             'Connection refused'})
    return 'ssh: connect to host backup.example.com port 22: Connection refused'


def ssh_key_refused(site):
    site.behave(ssh={'fail': 'root@backup.example.com: Permission denied '
                             '(publickey,gssapi-keyex,gssapi-with-mic).'})
    return 'Permission denied (publickey'


REFUSALS = [no_lvm, thin, geo_replication_running, hard_limit, name_exists, ssh_refused,
            ssh_key_refused]


@pytest.mark.parametrize('refusal', REFUSALS, ids=[r.__name__.replace('_', '-')
                                                   for r in REFUSALS])
def test_a_refusal_fails_the_run_with_glusters_own_words_and_leaves_no_vm_snapshot(
        site, refusal):
    site.add_vm('web')
    words = refusal(site)
    before = snapshots(site)
    result = site.run(config=config(site, **KEEP2))
    assert result.code == 1, result.output
    assert_invariants(site, result)      # the VM snapshots removed, nothing mounted
    alert = the_alert(site)
    assert 'no restore point taken of %s' % SLAVEVOL in alert
    assert words in alert, (words, alert)
    errors = [line for line in result.err.splitlines() if ' ERROR ' in line]
    assert any(words in line for line in errors), result.err
    # none taken, none deleted: the create was the only call
    assert snapshots(site) == before
    assert [remote_words(c)[2:4] for c in ssh_calls(site)] == [['snapshot', 'create']]
    # verified all the same: the copy itself is good
    assert 'verify: 1 disk of 1 VM verified restorable' in result.err


def test_a_listing_that_fails_after_the_create_deletes_nothing_and_fails_the_run(site):
    site.add_vm('web')
    plant(site, 'vmbackup-%s-%s' % (SLAVEVOL, stamp(time.time() - 86400)),
          time.time() - 86400)
    # the slave volume goes away between the create and the listing: info
    # answers opRet -1, "Volume (...) does not exist"
    wrapper = site.tmp / 'gluster-then-gone'
    wrapper.write_text('#!/bin/sh\n"%s" "$@"; status=$?\n'
                       'case "$*" in *create*) mv "%s" "%s.gone";; esac\n'
                       'exit $status\n' % (FAKEBIN / 'gluster', site.slave, site.slave))
    wrapper.chmod(0o755)
    result = site.run(config=config(site, keep='1', gluster=str(wrapper)))
    assert result.code == 1, result.output
    os.rename(str(site.slave) + '.gone', str(site.slave))
    alert = the_alert(site)
    assert 'cannot be listed (none deleted)' in alert
    assert 'Volume (%s) does not exist' % SLAVEVOL in alert
    assert len(ours(site)) == 2
    assert not [c for c in ssh_calls(site) if 'delete' in remote_words(c)]


# ---------------------------------------------------- --verify --restore-point

def good_restore_point(site):
    site.add_vm('web')
    site.engine.add_vm('db', disks=[dict(sd=site.sd_id, format='cow')])
    result = site.run(config=config(site, keep='2'))
    assert result.code == 0, result.output
    return status_of(site)['restore_points']['newest']


def test_verify_of_a_restore_point_reads_the_snapshot_read_only_and_deactivates_it_again(site):
    name = good_restore_point(site)
    # the slave volume itself is torn since (a sync under way): no matter
    for disk in site.engine.vm('web')['disks']:
        path = site.slave / site.sd_id / 'images' / disk['id'] / disk['image_id']
        path.write_bytes(b'')
    snapshot_before = tree(site.root / 'snaps' / name)
    site.engine.stop()
    calls = len(site.calls())
    result = site.run('--verify', '--restore-point', name, config=config(site))
    assert result.code == 0, result.output
    assert 'verify of restore point %s of backup.example.com::%s: 2 disks of 2 VMs ' \
           'verified restorable' % (name, SLAVEVOL) in result.err
    (mount,) = [c for c in site.calls('glusterfs')[-1:]]
    argv = mount['argv']
    assert argv[argv.index('--volfile-id') + 1] == '/snaps/%s/%s' % (name, SLAVEVOL)
    assert '--read-only' in argv and '--client-pid=-1' not in argv
    # activated for the verify, deactivated after it; nothing else asked
    asked = [remote_words(c)[2:] for c in site.calls()[calls:] if c['program'] == 'ssh']
    assert asked == [['snapshot', 'info', name, '--xml'], ['snapshot', 'activate', name],
                     ['snapshot', 'deactivate', name]]
    assert [s['status'] for s in snapshots(site) if s['name'] == name] == ['Stopped']
    assert tree(site.root / 'snaps' / name) == snapshot_before
    assert_invariants(site, result)


def test_verify_of_a_restore_point_names_a_planted_fault(site):
    name = good_restore_point(site)
    (disk,) = site.engine.vm('db')['disks']
    base = site.root / 'snaps' / name / site.sd_id / 'images' / disk['id'] / disk['chain'][0]
    with open(str(base), 'r+b') as stream:
        stream.truncate(65536)
    result = site.run('--verify', '--restore-point', name, config=config(site))
    assert result.code == 1, result.output
    assert any('verify: ' in line and disk['id'] in line and ': qemu-img check: ' in line
               for line in result.err.splitlines() if ' ERROR ' in line), result.err
    assert [s['status'] for s in snapshots(site) if s['name'] == name] == ['Stopped']
    assert_invariants(site, result)


def test_verify_of_an_activated_restore_point_leaves_it_activated(site):
    name = good_restore_point(site)
    gluster(site, 'snapshot', 'activate', name)
    result = site.run('--verify', '--restore-point', name, config=config(site))
    assert result.code == 0, result.output
    assert [s['status'] for s in snapshots(site) if s['name'] == name] == ['Started']
    assert not [c for c in ssh_calls(site) if 'deactivate' in remote_words(c)]


def test_verify_of_a_restore_point_that_does_not_exist_is_glusters_line_and_exit_1(site):
    result = site.run('--verify', '--restore-point', 'nosuch', config=config(site))
    assert result.code == 1, result.output
    assert 'restore point nosuch: gluster snapshot info on %s failed: Snapshot (nosuch) ' \
           'does not exist' % SLAVE in result.err
    assert site.calls('glusterfs') == []
    assert_invariants(site, result)


def test_verify_of_another_volumes_snapshot_is_refused(site, tmp_path):
    (tmp_path / 'gluster' / 'volumes' / 'other').mkdir()
    gluster(site, 'snapshot', 'create', 'theirs', 'other', 'no-timestamp')
    result = site.run('--verify', '--restore-point', 'theirs', config=config(site))
    assert result.code == 1, result.output
    assert 'restore point theirs is a snapshot of volume other, not of %s' % SLAVEVOL \
        in result.err
    assert site.calls('glusterfs') == []


@pytest.mark.parametrize('args, line', [
    (('--restore-point', 'x'), '--restore-point goes with --verify'),
    (('--verify', '--restore-point', 'a b'), "--restore-point 'a b' is not a gluster "
                                             "snapshot name"),
])
def test_a_bad_restore_point_option_is_one_line_and_exit_2(site, args, line):
    result = site.run(*args, config=config(site))
    assert result.code == 2, result.output
    assert line in result.err
    assert site.calls() == []


# ----------------------------------------------------- --status and --check

def test_status_and_check_tell_the_newest_restore_point_and_its_age(site):
    name = good_restore_point(site)
    result = site.run('--', MASTER, '--status', config=config(site, keep='2'))
    assert result.code == 0, result.output
    assert 'restore points: 1 kept on %s::%s (keep = 2); newest %s, taken ' % (
        SLAVE, SLAVEVOL, name) in result.out
    assert 'taken by the last run: %s' % name in result.out
    check = site.run('--', MASTER, '--check', config=config(site, keep='2'))
    assert check.code == 0, check.output
    assert check.out.startswith('VMBACKUP OK - ')
    assert 'newest restore point ' in check.out and '(1 kept)' in check.out
    assert ' restore_point_age=' in check.out and ' restore_points=1;;;0' in check.out


def test_check_is_critical_when_keep_is_set_and_no_restore_point_is_known(site):
    site.add_vm('web')
    result = site.run(config=config(site))        # keep = 0: none taken
    assert result.code == 0, result.output
    check = site.run('--', MASTER, '--check', config=config(site, keep='2'))
    assert check.code == 2, check.output
    assert 'no restore point known' in check.out


def test_a_failed_run_carries_the_newest_restore_point_over(site):
    name = good_restore_point(site)
    site.behave(schedule_georep={'exit': 1})
    result = site.run(config=config(site, keep='2'))
    assert result.code == 1, result.output
    points = status_of(site)['restore_points']
    assert (points['newest'], points['count'], points['taken']) == (name, 1, None)


# --------------------------------------------------------------- the config

@pytest.mark.parametrize('keys, line', [
    ({'keep': '-1'}, '[restore_points] keep = -1 must be 0 or more'),
    ({'keep': 'two'}, "[restore_points] keep = 'two' is not a whole number"),
    ({'keep': '300'}, '[restore_points] keep = 300 must be at most 256'),
    ({'ssh': "ssh -o 'BatchMode=yes"}, '[restore_points] ssh = "ssh -o \'BatchMode=yes" '
                                       'is not a command line'),
    ({'host': 'root@-oProxyCommand=x'}, "[restore_points] host = 'root@-oProxyCommand=x' "
                                        "is not HOST or user@HOST"),
])
def test_a_bad_restore_points_key_is_one_line_and_exit_2(site, keys, line):
    result = site.run(config=config(site, **keys))
    assert result.code == 2, result.output
    (error,) = result.err.strip().splitlines()
    assert line in error, error
    assert site.calls() == [] and site.engine.requests == []


def test_a_dry_run_says_the_restore_point_it_would_take_and_takes_none(site):
    site.add_vm('web')
    result = site.run('--dry-run', config=config(site, keep='2'))
    assert result.code == 0, result.output
    assert 'would take the restore point vmbackup-%s-' % SLAVEVOL in result.out
    assert ("ssh -o BatchMode=yes %s 'gluster --mode=script snapshot create NAME %s "
            "no-timestamp description '\"'\"'EVENT TEXT'\"'\"''" % (SLAVE, SLAVEVOL)) in result.out
    assert 'beyond keep = 2' in result.out
    assert ssh_calls(site) == [] and snapshots(site) == []
