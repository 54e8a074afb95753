"""End to end: the real vmbackup.py through real GlusterFS geo-replication.

The fake engine (HTTPS, the real ovirtsdk4 in the tool) has a GlusterFS
storage domain whose files live in the master volume of a GeoRepLab (a real
GlusterFS 10.3 geo-replication session on this machine, see georep.py and
NOTES.md): the engine writes the VMs' disk files, and the overlays of every
snapshot, through the lab's FUSE mount of the master, as vdsm would. The tool
runs as a subprocess with the real packaged schedule_georep.py (its default
search: no [gluster] schedule_georep in the config) and the real glusterfs
FUSE client (its default /usr/sbin/glusterfs) to mount the slave.

Each run of the tool takes about 65-75 s: the scheduler sleeps a fixed 60 s
after starting the session. The lab is shared by the tests of this module
(set-up ~20 s, tear-down ~5 s); the timings are printed on stderr at the end.
"""
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))     # support

from support import georep  # noqa: E402
from support.site import (BARE_DESCRIPTION, PASSWORD, USER, VMBACKUP,  # noqa: E402
                          Result, assert_invariants, mounts_under, our_snapshots,
                          ovf_store_paths, wait_for, without_voltype)

# one lab per machine: under xdist (make test: --dist loadgroup) every test
# of this module must run on the same worker, which sets the lab up once
pytestmark = [pytest.mark.gluster, pytest.mark.xdist_group(name='gluster')]

SUFFIXES = ('', '.meta', '.lease')
# seconds before a run of the tool counts as hung and is stopped
RUN_LIMIT = 400
USER_SNAPSHOT = 'before upgrade'
SHARD_BLOCK = '4MB'
SHARD_BYTES = 4 << 20

TIMINGS = []       # (what, seconds), printed when the lab is torn down


def note_time(what, seconds):
    TIMINGS.append((what, seconds))
    print('[e2e] %s: %.1f s' % (what, seconds), file=sys.__stderr__,
          flush=True)


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    reason = georep.skip_reason()
    if reason:
        pytest.skip(reason)
    start = time.monotonic()
    # sharded as oVirt's volumes are (group virt), with small shards to keep
    # it fast; xsync, since every case here needs the real scheduler to
    # complete (in changelog mode it completed 1 run in 4 here:
    # gluster-notes.md; see run_changelog.py for changelog mode)
    lab = georep.GeoRepLab(tmp_path_factory.mktemp('lab'),
                           shard_block_size=SHARD_BLOCK)
    teardown_start = None
    try:
        with lab:
            note_time('lab set-up', time.monotonic() - start)
            yield lab
            teardown_start = time.monotonic()
    finally:
        end = time.monotonic()
        if teardown_start is not None:
            note_time('lab tear-down', end - teardown_start)
        note_time('module total (set-up to tear-down)', end - start)
        lines = ['[e2e] timings of tests/gluster/test_real_georep.py:']
        lines += ['  %-50s %6.1f s' % (phase, seconds)
                  for phase, seconds in lab.timings
                  if not phase.startswith('tear-down ')
                  or phase == 'tear-down total']
        lines += ['  %-50s %6.1f s' % item for item in TIMINGS]
        print('\n'.join(lines), file=sys.__stderr__, flush=True)


# --------------------------------------------------------------------- helpers

def same_file(path, expected, found):
    if found is None:
        return False
    if path.endswith('.meta'):
        return without_voltype(found) == without_voltype(expected)
    return found == expected


def glusterfs_mounts_of(volume):
    """Mount points of FUSE glusterfs clients of volume, in the kernel's
    mount table (the tool's, gsyncd's aux mounts, anybody's)."""
    found = []
    with open('/proc/self/mountinfo') as info:
        for line in info:
            fields = line.split()
            tail = fields[fields.index('-') + 1:]
            fstype, source = tail[0], tail[1]
            if fstype.startswith('fuse.glusterfs') and \
                    re.split(r'[:/]', source)[-1] == volume:
                found.append(fields[4])
    return found


class World:
    """The fake engine's VMs on a storage domain in the lab's master."""

    def __init__(self, lab, engine, tmp_path, template=False):
        self.lab = lab
        self.engine = engine
        self.tmp = tmp_path
        self.scratch = tmp_path / 'scratch'     # the tool's TMPDIR
        self.scratch.mkdir()
        (tmp_path / 'lock').mkdir()
        self.mount_log = tmp_path / 'log' / 'dr_slave.mount.log'
        self.sd_id = engine.add_storage_domain(
            'georeplab-sd', str(lab.master_mount), type='glusterfs',
            address=lab.host, path='/' + lab.master)
        # a file of the domain that is not a disk image: must survive
        lab.write_master('%s/dom_md/metadata' % self.sd_id,
                         b'CLASS=Data\nSDUUID=%s\n' % self.sd_id.encode())
        sizes = iter([300 * 1024, 512 * 1024 + 123, 200 * 1024 + 7,
                      400 * 1024 + 4095])
        self.add_vm('web', [next(sizes), next(sizes)])
        self.add_vm('db', [next(sizes)])
        self.add_vm('stopped', [next(sizes)], status='down')
        # a user's own snapshot: its overlay must stay at the remote site
        engine.add_snapshot('db', USER_SNAPSHOT)
        self.up_vms = ('web', 'db')
        if template:
            # a template and a thin VM on it: the template's volume, .meta and
            # .lease hard-linked into the VM's image through the master's
            # FUSE mount, as vdsm's Volume.share does
            engine.add_template('tpl', disks=[dict(sd=self.sd_id,
                                                   content=os.urandom(256 * 1024))])
            engine.add_vm('thin', template='tpl')
            self.up_vms += ('thin',)
        self.run_overlays = {}     # of the last run, see run()

    def add_vm(self, name, sizes, status='up'):
        self.engine.add_vm(name, status=status, disks=[
            dict(sd=self.sd_id, content=os.urandom(size)) for size in sizes])

    def rel(self, disk_id, volume_id):
        return '%s/images/%s/%s' % (self.sd_id, disk_id, volume_id)

    def describe(self, relpath):
        """relpath, and what it is: whose base image, overlay, ..."""
        kinds = {}
        for name in self.engine.vm_names():
            for number, disk in enumerate(self.engine.vm(name)['disks'], 1):
                kinds[self.rel(disk['id'], disk['chain'][0])] = \
                    'base image of VM %s disk %d' % (name, number)
                for snapshot in self.engine.vm(name)['snapshots']:
                    volumes = snapshot['volumes'].get(disk['id'])
                    if volumes:
                        kinds[self.rel(disk['id'], volumes['overlay'])] = \
                            'overlay of snapshot %r of VM %s disk %d' % (
                                snapshot['description'], name, number)
        for (name, disk), (base, overlay) in self.run_overlays.items():
            kinds[self.rel(disk, overlay)] = (
                "overlay of this run's snapshot of VM %s disk %s" % (name,
                                                                    disk))
        stem = relpath
        for suffix in ('.meta', '.lease'):
            if relpath.endswith(suffix):
                stem = relpath[:-len(suffix)]
        kind = kinds.get(stem, 'not a disk image of this test')
        if stem != relpath:
            kind = '%s of the %s' % (relpath[len(stem):], kind)
        return '%s (%s)' % (relpath, kind)

    def user_overlays(self):
        """{disk id: overlay id} of the user's snapshot on db."""
        (snapshot,) = [s for s in self.engine.vm('db')['snapshots']
                       if s['description'] == USER_SNAPSHOT]
        return {disk: v['overlay'] for disk, v in snapshot['volumes'].items()}

    def config(self, scheduler=None, extra=''):
        path = self.tmp / 'backup.cfg'
        path.write_text(
            '[connection]\n'
            'server = %s\n'
            'user_name = %s\n'
            'password = %s\n'
            'ca_file = %s\n'
            'timeout = 30\n'
            '[snapshot]\n'
            'wait_timeout = 0.5\n'
            'poll_interval = 0.2\n'
            '[gluster]\n'
            'mount_log = %s\n'
            'master_server = %s\n'
            '%s'
            '[lock]\n'
            'lock_dir = %s\n'
            'skip_within = 0\n'
            % (self.engine.url, USER, PASSWORD,
               self.engine.ca_pem_path(str(self.tmp)), self.mount_log,
               self.lab.host,
               'schedule_georep = %s\n' % scheduler if scheduler else '',
               self.tmp / 'lock') + extra)
        path.chmod(0o600)
        return str(path)

    def run(self, timeout_minutes, what, *extra, scheduler=None, config=''):
        """Run the tool; return (exit status, its output (the tool drops the
        scheduler's colours), {(vm, disk id): (base id, overlay id)} of the snapshots
        with our description the engine made during the run)."""
        made_before = len(self.engine.overlays)
        command = [sys.executable, str(VMBACKUP), self.lab.master,
                   self.lab.host, self.lab.slave, '-c',
                   self.config(scheduler=scheduler, extra=config),
                   '-i', '5', '-t', str(timeout_minutes)] + list(extra)
        env = dict(self.lab.env, TMPDIR=str(self.scratch))
        start = time.monotonic()
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        try:
            output, _ = process.communicate(timeout=RUN_LIMIT)
        except subprocess.TimeoutExpired:
            # it hangs: SIGTERM lets it remove its snapshots; then SIGKILL
            process.send_signal(signal.SIGTERM)
            try:
                output, _ = process.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
            pytest.fail('vmbackup.py still ran after %d s: stopped\n%s'
                        % (RUN_LIMIT, output.decode('utf-8', 'replace')))
        finally:
            note_time('vmbackup.py run (%s, exit %s)'
                      % (what, process.returncode), time.monotonic() - start)
        output = output.decode('utf-8', 'replace')
        (self.tmp / 'vmbackup.out').write_text(output)
        print(output, file=sys.stderr)     # shown with -s, or on failure
        # the real scheduler colours its [    OK] marks even into a pipe:
        # the tool's log has the text without the colours
        assert '\x1b' not in output
        # the overlays of the snapshots with our description that the engine
        # made during the run (their merge took them off the VMs)
        self.run_overlays = {
            (made['vm'], made['disk_id']): (made['base'], made['overlay'])
            for made in self.engine.overlays[made_before:]
            if made['description'] == '%s %s' % (BARE_DESCRIPTION,
                                                  self.lab.master)}
        return process.returncode, output, self.run_overlays


def slave_gfids(lab, paths):
    """{relative path: its gfid at the slave brick} of the .meta among paths."""
    return {path: os.getxattr(str(lab.slave_brick / path), 'trusted.gfid')
            for path in paths if path.endswith('.meta')}


def qemu_img_check(path):
    return subprocess.run(['qemu-img', 'check', '-U', str(path)],
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode in (0, 63)


def scheduler_lines(output):
    return [line.split('schedule_georep: ', 1)[1]
            for line in output.splitlines() if 'schedule_georep: ' in line]


def the_event(engine, severity, start):
    """The one event of the run, of this severity, its text starting so."""
    assert len(engine.events) == 1, engine.events
    (event,) = engine.events
    assert event['origin'] == 'ovirt-georep-backup'
    assert event['severity'] == severity, event
    assert event['description'].startswith(start), event
    return event


def real_snapshot_refusal(lab):
    """Return what the lab's real glusterd says, after "snapshot create:
    failed: ", to a snapshot of the slave volume (printed for NOTES.md)."""
    probe = lab.gluster('snapshot', 'create', 'vmbackup-probe', lab.slave,
                        'no-timestamp', check=False)
    print('[e2e] real gluster snapshot create: exit %d, stdout %r, stderr %r'
          % (probe.returncode, probe.stdout, probe.stderr), file=sys.__stderr__)
    if probe.returncode == 0:
        delete_real_snapshots(lab)
        pytest.fail('the lab made a gluster snapshot: this test expects bricks '
                    'without thin LVM')
    (line,) = [line for line in probe.stderr.splitlines()
               if line.startswith('snapshot create: failed: ')]
    info = lab.gluster('snapshot', 'info', 'nosuch', '--xml', check=False)
    print('[e2e] real gluster snapshot info nosuch --xml: exit %d, stdout %r, '
          'stderr %r' % (info.returncode, info.stdout, info.stderr),
          file=sys.__stderr__)
    return line[len('snapshot create: failed: '):]


def delete_real_snapshots(lab):
    """Delete every snapshot of the lab's slave volume (none is expected):
    a volume with snapshots cannot be deleted at the lab's tear-down."""
    listing = lab.gluster('snapshot', 'list', lab.slave, check=False).stdout
    for name in listing.split():
        if name.startswith('vmbackup-'):
            lab.gluster('snapshot', 'delete', name, check=False)


def assert_nothing_left(world, output):
    """What must hold after every run, whatever happened."""
    assert 'Traceback' not in output, output
    assert PASSWORD not in output
    assert mounts_under(world.tmp) == []
    assert list(world.scratch.iterdir()) == []
    # gsyncd's own aux mounts of the slave go a moment after the session
    # stopped; the tool's went before it exited (checked just above)
    wait_for(lambda: not glusterfs_mounts_of(world.lab.slave), timeout=30,
             interval=0.5, message='no glusterfs mount of %s left (%s)'
             % (world.lab.slave, glusterfs_mounts_of(world.lab.slave)))
    assert our_snapshots(world.engine) == {}
    # the user's snapshot is untouched
    assert [s['description'] for s in world.engine.vm('db')['snapshots']
            if s['type'] != 'active'] == [USER_SNAPSHOT]
    assert world.engine.errors == []


# ----------------------------------------------------------------------- tests

def test_a_backup_through_real_georep_copies_the_bases_and_drops_only_this_runs_overlays(
        lab, engine, tmp_path):
    world = World(lab, engine, tmp_path, template=True)
    user_overlays = world.user_overlays()
    master_before = lab.master_tree()
    # dom_md/metadata, 4 base images, the user's overlay, 2 OVF stores, the
    # template's volume and the thin VM's two (the template's linked, its
    # own), 3 files each
    assert len([p for p in master_before
                if p.startswith(world.sd_id + '/')]) == 1 + 3 * (4 + 1 + 2 + 3)
    (template_disk,) = engine.template('tpl')['disks']
    (thin_disk,) = engine.vm('thin')['disks']
    shared = template_disk['image_id']
    ovf_paths = ovf_store_paths(engine)

    code, output, overlays = world.run(3, 'success')

    assert code == 0, output
    assert_nothing_left(world, output)
    # the real scheduler saw the checkpoint complete and stopped the session
    lines = scheduler_lines(output)
    assert any(line.startswith('[    OK] All Checkpoints COMPLETE')
               for line in lines), lines
    assert 'geo-replication reached its checkpoint' in output
    assert lab.session_state() == 'Stopped'
    # one snapshot per running VM, an overlay for each of their disks
    web_disks = [d['id'] for d in engine.vm('web')['disks']]
    db_disks = [d['id'] for d in engine.vm('db')['disks']]
    assert sorted(overlays) == sorted([('web', d) for d in web_disks]
                                      + [('db', d) for d in db_disks]
                                      + [('thin', thin_disk['id'])])
    for (name, disk), (base, overlay) in overlays.items():
        assert overlay != base
        # merged: the disk is on its base image again, at the master
        (view,) = [d for d in engine.vm(name)['disks'] if d['id'] == disk]
        assert view['image_id'] == base
    # the tool confirmed each disk at the slave (size and mtime, mount to
    # mount, as real geo-replication keeps them), then dropped its overlay
    assert output.count('confirmed at the remote site') == len(overlays)
    assert 'repaired %d of %d chains at the remote site' % (
        len(overlays), len(overlays)) in output
    # at the slave: every file the master had before the snapshots, byte for
    # byte (.meta but for VOLTYPE); this run's overlays are not there
    slave = lab.slave_tree()
    missing = [world.describe(path) for path in master_before
               if path not in slave]
    assert not missing, 'missing at the slave:\n' + '\n'.join(missing)
    differ = [world.describe(path) for path, content in master_before.items()
              if path not in ovf_paths
              and not same_file(path, content, slave[path])]
    assert not differ, ('not as the master had it, at the slave:\n'
                        + '\n'.join(differ))
    left = [world.describe(world.rel(disk, overlay) + suffix)
            for (name, disk), (base, overlay) in overlays.items()
            for suffix in SUFFIXES
            if lab.slave_exists(world.rel(disk, overlay) + suffix)]
    assert not left, ("this run's overlays left at the slave:\n"
                      + '\n'.join(left))
    extra = [world.describe(path) for path in set(slave) - set(master_before)]
    assert not extra, ('at the slave but not in the master before the '
                       'run:\n' + '\n'.join(extra))
    # the base images in particular, and what is not a disk image
    for name in ('web', 'db', 'stopped'):
        for disk in engine.vm(name)['disks']:
            base = world.rel(disk['id'], disk['chain'][0])
            assert lab.read_slave(base) == master_before[base], base
    assert lab.read_slave('%s/dom_md/metadata' % world.sd_id) == \
        master_before['%s/dom_md/metadata' % world.sd_id]
    # the user's snapshot overlay is at the slave, as the master had it
    for disk, overlay in user_overlays.items():
        for suffix in SUFFIXES:
            path = world.rel(disk, overlay) + suffix
            assert same_file(path, master_before[path],
                             lab.read_slave(path)), path
    # the down VM was not snapshotted
    assert [s['type'] for s in engine.vm('stopped')['snapshots']] == ['active']
    # the event
    the_event(engine, 'normal', 'Successfully backed up gluster volume %s to '
              'remote site. Backup completed in ' % lab.master)
    # each base at the slave is the leaf again, and qemu-img finds it clean
    for (name, disk), (base, overlay) in overlays.items():
        meta = lab.read_slave(world.rel(disk, base) + '.meta')
        assert b'\nVOLTYPE=LEAF\n' in meta, world.describe(world.rel(disk, base))
        assert qemu_img_check(lab.slave_brick / world.rel(disk, base)), base
    summary = '5 disks of 4 VMs and 1 disk of 1 template verified restorable'
    assert 'verify: %s' % summary in output
    # the template's volume reached the slave in both images, its bytes the
    # master's (same inode or not: vdsm reads either), the thin VM's own
    # base is its leaf, on it
    for image in (template_disk['id'], thin_disk['id']):
        for suffix in SUFFIXES:
            path = world.rel(image, shared) + suffix
            assert lab.read_slave(path) == master_before[path], world.describe(path)
    linked = [os.stat(str(lab.slave_brick / world.rel(image, shared))).st_ino
              for image in (template_disk['id'], thin_disk['id'])]
    note_time('the template volume at the slave is %s (inodes %s)' % (
        'one file, hard-linked' if linked[0] == linked[1] else 'two copies', linked), 0)

    # --verify alone at the slave: no engine, no change
    slave_before = lab.slave_tree()
    code, output, _ = world.run(3, 'verify', '--verify')
    assert code == 0, output
    assert 'verify of %s::%s: %s' % (lab.host, lab.slave, summary) in output
    assert lab.slave_tree() == slave_before
    assert_nothing_left(world, output)

    # the second night, with the engine's periodic OVF write in the middle:
    # the .meta rewritten in place last night syncs again (its gfid is the
    # master's), the OVF store is put back at the slave. And with restore
    # points on: the tool asks the lab's real glusterd, over real ssh to the
    # slave node (root@HOST, BatchMode), for a snapshot of the slave volume;
    # its bricks are plain directories (no device-mapper here, so no thin
    # LV), and gluster's own refusal must be the run's failure, in the alert
    refusal = real_snapshot_refusal(lab)
    engine.rewrite_ovf_store_after_snapshot()
    master_night2 = lab.master_tree()
    try:
        code, output, overlays2 = world.run(3, 'second night',
                                            config='[restore_points]\nkeep = 2\n')
    finally:
        delete_real_snapshots(lab)
    assert code == 1, output
    alert = engine.events[-1]
    assert alert['severity'] == 'alert', alert
    assert 'no restore point taken of %s: gluster snapshot create on %s failed' % (
        lab.slave, lab.host) in alert['description'], alert
    assert 'snapshot create: failed: ' + refusal in alert['description'], (refusal, alert)
    assert world.run_overlays and our_snapshots(engine) == {}
    assert_nothing_left(world, output)
    assert lab.session_state() == 'Stopped'
    assert output.count('confirmed at the remote site') == len(overlays2) == 4
    assert 'was rewritten during the run' in output
    for (name, disk), (base, overlay) in overlays2.items():
        path = world.rel(disk, base) + '.meta'
        assert without_voltype(lab.read_slave(path)) == \
            without_voltype(master_night2[path]), world.describe(path)
        assert b'\nVOLTYPE=LEAF\n' in lab.read_slave(path)
    requested = [w for w in engine.ovf_writes
                 if w['sd'] == world.sd_id and w['reason'] == 'requested'][-1]
    for disk_id, volume_id in engine.ovf_stores(world.sd_id):
        meta = lab.read_slave(world.rel(disk_id, volume_id) + '.meta').decode()
        assert requested['last_updated'] in meta, meta
    assert 'verify: %s' % summary in output
    # --verify of a restore point: real gluster's XML answer (opRet -1) over ssh
    code, output, _ = world.run(3, 'verify of no such restore point', '--verify',
                                '--restore-point', 'nosuch')
    assert code == 1, output
    # 10.3 without lvm2 refuses every snapshot command, info too, before
    # looking for the name (glusterd_handle_snapshot: no /sbin/lvcreate)
    assert 'restore point nosuch: gluster snapshot info on %s failed: %s' % (
        lab.host, refusal) in output, output
    assert 'mounting' not in output

    # planted faults at the slave: --verify names each disk and its check
    web_disks = [d['id'] for d in engine.vm('web')['disks']]
    (db_disk,) = [d['id'] for d in engine.vm('db')['disks']]
    db_leaf = overlays2[('db', db_disk)][0]          # the user's qcow2 overlay
    with lab.mount_slave() as slave:
        qcow2 = slave / world.rel(db_disk, db_leaf)
        with open(str(qcow2), 'r+b') as stream:
            stream.truncate(65536 + 512)
        base = overlays2[('web', web_disks[0])][0]
        os.unlink(str(slave / world.rel(web_disks[0], base)))
        # a second volume whose .meta says LEAF too
        second = overlays2[('web', web_disks[1])][0]
        extra = slave / world.rel(web_disks[1], '%s' % overlays2[('web', web_disks[1])][1])
        extra.with_name(extra.name + '.meta').write_text(
            (slave / world.rel(web_disks[1], second + '.meta')).read_text())
        extra.write_bytes(b'')
    code, output, _ = world.run(3, 'verify of planted faults', '--verify')
    assert code == 1, output
    for disk, check in ((db_disk, 'qemu-img check'), (web_disks[0], 'volumes'),
                        (web_disks[1], 'chain')):
        assert re.search(r'ERROR verify: VM \S+ disk %s: %s: ' % (disk, check),
                         output), (disk, check, output)
    assert 'LEAF volumes' in output
    assert_nothing_left(world, output)


def test_when_georep_cannot_complete_the_run_fails_and_leaves_the_slave_alone(
        lab, engine, tmp_path):
    world = World(lab, engine, tmp_path)
    master_before = lab.master_tree()
    with lab.broken_replication():
        slave_before = lab.slave_tree()
        gfids_before = slave_gfids(lab, slave_before)
        code, output, overlays = world.run(1, 'geo-replication broken')
        state = lab.session_state()
        slave_after = lab.slave_tree()
        gfids_after = slave_gfids(lab, slave_after)

    assert code == 1, output
    assert_nothing_left(world, output)
    # the real scheduler gave up on its --timeout and stopped the session
    lines = scheduler_lines(output)
    assert any(line.startswith('[NOT OK] Timed out, Stopping Geo-replication')
               for line in lines), lines
    assert ('geo-replication failed: the checkpoint was not reached within '
            '--timeout 1 minutes') in output
    assert state == 'Stopped'
    # the slave was not even mounted: nothing deleted there
    assert 'the remote site is left as it is' in output
    assert 'mounting the slave volume' not in output
    deleted = [world.describe(path) for path in slave_before
               if path not in slave_after]
    assert not deleted, 'deleted at the slave:\n' + '\n'.join(deleted)
    # but by geo-replication itself: the snapshot rewrote each base's .meta
    # at the master as vdsm does (.meta.new, rename: a new gfid), and the
    # crawl created that new file at the slave before its data sync hung (a
    # new gfid there too; the tool only ever edits in place)
    changed = [world.describe(path) for path, content in slave_before.items()
               if not same_file(path, content, slave_after[path])
               and not (path.endswith('.meta')
                        and gfids_after[path] != gfids_before[path])]
    assert not changed, 'changed at the slave:\n' + '\n'.join(changed)
    # the snapshots were made, then removed: the disks are on their bases
    assert len(overlays) == 3, overlays
    for (name, disk), (base, overlay) in overlays.items():
        (view,) = [d for d in engine.vm(name)['disks'] if d['id'] == disk]
        assert view['image_id'] == base
        assert not os.path.exists(lab.master_mount / world.rel(disk, overlay))
    assert lab.master_tree().keys() >= master_before.keys()
    # the alert
    event = the_event(engine, 'alert', 'Failed to backup gluster volume %s to '
                      'remote site. Please check backup log for details'
                      % lab.master)
    assert 'geo-replication' in event['description']
    # repaired on the way out of broken_replication(): rsync again
    assert lab.georep('config', 'rsync-command').stdout.strip() == 'rsync'


def test_a_session_that_says_complete_without_syncing_fails_the_run_and_touches_nothing(
        lab, engine, tmp_path):
    """What gluster's scheduler does with no Active worker (NOTES.md): exit
    0, "All Checkpoints COMPLETE", nothing synced. Here a scheduler that says
    just that, over the real volumes."""
    world = World(lab, engine, tmp_path)
    liar = tmp_path / 'schedule_georep_that_lies'
    liar.write_text('#!/bin/sh\n'
                    'echo "[    OK] All Checkpoints COMPLETE, All status OK" >&2\n'
                    'exit 0\n')
    liar.chmod(0o755)
    slave_before = lab.slave_tree()
    code, output, overlays = world.run(3, 'complete without syncing',
                                       scheduler=str(liar))
    assert code == 1, output
    assert_nothing_left(world, output)
    assert len(overlays) == 3
    for (name, disk), _ in overlays.items():
        assert re.search(r'VM %s disk %s: the copy at the remote site is not '
                         r'confirmed: base volume \S+ is not at the slave'
                         % (name, disk), output), output
    assert lab.slave_tree() == slave_before
    assert 'verify:' not in output
    event = the_event(engine, 'alert', 'Failed to backup gluster volume')
    assert 'not confirmed' in event['description']


# -- the lock on shared storage: one run per volume across the pool ----------
# An flock taken through one FUSE mount of a volume excludes a run that locks
# through another client's mount of the same volume: two mounts of the lab's
# master volume stand in for the shared storage of two nodes; the engine and
# the scheduler are the fakes (only the lock is under test).

@pytest.fixture
def two_nodes(lab):
    """Yield the lock directories of two "nodes": the same directory of the
    master volume through the lab's mount and through a second mount."""
    node2 = lab.mnt_dir / 'node2-shared-storage'
    lab._mount(lab.master, node2, lab.log_dir / 'node2-mount.log')
    try:
        name = 'vmbackup-%s' % uuid.uuid4()
        (lab.master_mount / name).mkdir()
        wait_for(lambda: (node2 / name).is_dir(), timeout=30,
                 message='the directory through the second mount')
        yield lab.master_mount / name, node2 / name
    finally:
        lab._umount(node2)


def test_a_lock_through_one_fuse_mount_excludes_a_run_through_another_mount(
        two_nodes, site, stop_process, tmp_path):
    node1_lock, node2_lock = two_nodes
    site.add_vm('web')
    gate = tmp_path / 'gate'
    site.behave(schedule_georep={'gate': str(gate)})
    first = site.start('-q', config=site.config(
        lock={'lock_dir': str(node1_lock)}, name='node1.cfg'))
    stop_process(first)
    wait_for(lambda: site.calls('schedule_georep'), message='node 1 to replicate')
    snapshots = site.our_snapshots()
    second = site.run(config=site.config(
        lock={'lock_dir': str(node2_lock)}, name='node2.cfg'))
    assert second.code == 3, second.output
    assert 'another backup of volume vmstore is running (pid %d' % first.pid in second.err
    # the shared lock is known as such: no "this node only" line
    assert 'on this node only' not in second.err
    assert site.our_snapshots() == snapshots
    assert [r for r in site.engine.requests if r['method'] == 'DELETE'] == []
    gate.touch()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert_invariants(site, Result(first.returncode, out, err))


# -- sharding: the confirm covers every shard ---------------------------------

def test_a_sharded_base_is_confirmed_whole_and_a_later_shard_not_at_the_slave_fails_it(
        lab, engine, tmp_path):
    """A 9 MiB raw base is the base file plus .shard/<gfid>.1 and .2 on the
    bricks. Night 1 (the real scheduler): confirmed whole (the tool's slave
    mount sees the whole file: gsyncd's --client-pid=-1 would see 4 MiB)
    and verified, on the checkpoint the tool saw complete in `status detail`
    while the session ran. Night 2: a scheduler that runs the real one and
    then puts one byte of the base's second shard at the slave brick back as
    it was (a shard that did not reach the slave): size and mtime at fresh
    mounts are the master's, the content is not, and the confirm names the
    disk."""
    world = World(lab, engine, tmp_path)
    big = os.urandom(9 << 20)
    engine.add_vm('big', disks=[dict(sd=world.sd_id, content=big)])
    (disk,) = engine.vm('big')['disks']
    base = world.rel(disk['id'], disk['chain'][0])
    # the base is sharded at the master: two shards past the base file
    gfid = uuid.UUID(bytes=os.getxattr(str(lab.master_brick / base), 'trusted.gfid'))
    shards = sorted(p.name for p in (lab.master_brick / '.shard').glob('%s.*' % gfid))
    assert shards == ['%s.1' % gfid, '%s.2' % gfid], shards

    code, output, overlays = world.run(3, 'sharded base, night 1')
    assert code == 0, output
    assert_nothing_left(world, output)
    # the completion read while the session ran, or (when the scheduler
    # stopped the session before the tool's next read) the Active worker on
    # this run's checkpoint seen just before the scheduler's COMPLETE
    brick = '%s:%s' % (lab.host, re.escape(str(lab.master_brick)))
    assert re.search(r'geo-replication %s -> %s::%s: (checkpoint of \S+ \S+ UTC completed '
                     r'at \S+ \S+ UTC on %s \(replica set 1 of 1\)|replica set 1 of 1 '
                     r'\(%s\) had an Active worker on this run\'s checkpoint)' % (
                         lab.master, lab.host, lab.slave, brick, brick), output), output
    assert 'VM big disk %s: base %s confirmed at the remote site' % (
        disk['id'], disk['chain'][0]) in output
    assert 'verify: 5 disks of 4 VMs verified restorable' in output
    # the slave brick has the shards; a mount of the slave reads the file whole
    slave_shard = lab.slave_brick / '.shard' / ('%s.2' % gfid)
    assert slave_shard.exists()
    with lab.mount_slave(client_pid=None) as slave:
        assert (slave / base).read_bytes()[:len(big)] == big

    # night 2: the second shard's byte put back at the slave after the sync
    at = 2 * SHARD_BYTES + 4321
    info = os.stat(str(slave_shard))
    with open(str(slave_shard), 'r+b') as shard:
        shard.seek(at - 2 * SHARD_BYTES)
        old = shard.read(1)
    wrapper = tmp_path / 'scheduler_then_stale_shard'
    wrapper.write_text(
        '#!/bin/sh\n'
        '# the real scheduler, then one byte of a later shard not the master\'s\n'
        'python3 %s "$@"\n'
        'code=$?\n'
        'python3 -c "import os, sys; p = sys.argv[1]; i = os.stat(p); '
        'f = open(p, \'r+b\'); f.seek(%d); b = f.read(1); f.seek(%d); '
        'f.write(bytes([b[0] ^ 255])); f.close(); '
        'os.utime(p, ns=(i.st_atime_ns, i.st_mtime_ns))" %s\n'
        'exit $code\n' % (lab.scheduler, at - 2 * SHARD_BYTES,
                          at - 2 * SHARD_BYTES, slave_shard))
    wrapper.chmod(0o755)
    assert old == big[at:at + 1] and info.st_size == len(big) - 2 * SHARD_BYTES
    code, output, overlays = world.run(3, 'sharded base, a later shard stale',
                                       scheduler=str(wrapper))
    assert code == 1, output
    assert_nothing_left(world, output)
    assert 'geo-replication reached its checkpoint' in output
    assert re.search(r'ERROR VM big disk %s: the copy at the remote site is not confirmed: '
                     r'base volume %s differs from the master at the slave from byte %d '
                     % (disk['id'], disk['chain'][0], at), output), output
    # what the confirm by size and mtime alone saw: nothing wrong
    with lab.mount_slave(client_pid=None) as slave:
        seen = os.stat(str(slave / base))
        slave_bytes = (slave / base).read_bytes()
    fresh = tempfile.mkdtemp(prefix='fresh-master-', dir=str(lab.mnt_dir))
    lab._mount(lab.master, fresh, lab.log_dir / 'fresh-master.log')
    try:
        master_seen = os.stat(os.path.join(fresh, base))
    finally:
        lab._umount(fresh)          # and removes the directory
    assert (seen.st_size, seen.st_mtime_ns) == (master_seen.st_size,
                                                master_seen.st_mtime_ns)
    assert slave_bytes[at] != big[at]
    # the other disks were confirmed
    assert output.count('confirmed at the remote site') >= 3
