"""The remote copy as a DR engine would import it: the OVF store written
before the snapshots, the copy confirmed before anything at the slave is
changed, the chains repaired, the OVF store kept true, and --verify; against
the fake engine (vdsm's .meta, real qemu-img volumes, the engine's OVF store
tar) and the fake gluster sites."""
import importlib.util
import io
import json
import os
import re
import shutil
import tarfile

import pytest

from support.site import (DESCRIPTION, MASTER, VMBACKUP, assert_invariants,
                          needs_root, ovf_store_paths, tree, without_voltype)

pytestmark = needs_root

spec = importlib.util.spec_from_file_location('vmbackup_under_test', str(VMBACKUP))
vmbackup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vmbackup)

USER_SNAPSHOT = 'before upgrade'


# ---------------------------------------------------------------- helpers

def meta_of(path):
    return dict(line.split('=', 1) for line in
                open(path).read().split('EOF')[0].splitlines() if '=' in line)


def volume(site, root, disk_id, volume_id, suffix=''):
    return os.path.join(str(root), site.sd_id, 'images', disk_id, volume_id + suffix)


def newest_store_vms(site, root):
    """{vm id: OVF text} of the store a DR engine would import from root."""
    store = vmbackup.newest_ovf_store(str(root), site.sd_id,
                                      site.engine.ovf_stores(site.sd_id))
    with tarfile.open(fileobj=io.BytesIO(store.data)) as tar:
        return {m.name[:-4]: tar.extractfile(m).read().decode()
                for m in tar.getmembers() if m.name.endswith('.ovf')}


def build(site):
    """web: two raw disks; db: a qcow2 base under a user's snapshot;
    stopped: down. Return the slave as last night's backup left it."""
    site.add_vm('web', disks=2)
    site.engine.add_vm('db', disks=[dict(sd=site.sd_id, format='cow')])
    site.engine.add_snapshot('db', USER_SNAPSHOT)
    site.add_vm('stopped', status='down')
    shutil.copytree(str(site.master), str(site.slave), dirs_exist_ok=True)
    return tree(site.slave)


def writes(site):
    """The OVF store writes of the master's domain."""
    return [w for w in site.engine.ovf_writes if w['sd'] == site.sd_id]


def this_runs_overlays(engine):
    return [made for made in engine.overlays if made['description'] == DESCRIPTION]


def errors(result):
    return [line for line in result.err.splitlines() if ' ERROR ' in line]


# ----------------------------------------------------------- a whole backup

def test_a_backup_leaves_each_base_the_leaf_at_the_slave_in_place_and_verified(site):
    engine = site.engine
    build(site)
    inodes = {}
    for name in ('web', 'db'):
        for disk in engine.vm(name)['disks']:
            path = volume(site, site.slave, disk['id'], disk['image_id'], '.meta')
            inodes[path] = os.stat(path).st_ino
    result = site.run()

    assert result.code == 0, result.output
    assert_invariants(site, result)
    # the OVF store was written before the first snapshot, with the master
    # mounted read-only to see it written
    posts = [r['path'] for r in engine.requests if r['method'] == 'POST']
    first_snapshot = [i for i, p in enumerate(posts) if p.endswith('/snapshots')][0]
    assert posts.index('/storagedomains/%s/updateovfstore' % site.sd_id) < first_snapshot
    assert [w['reason'] for w in writes(site)] == ['created', 'requested']
    (master_mount,) = site.mounts(MASTER)
    assert '--read-only' in master_mount['argv']
    made = this_runs_overlays(engine)
    assert len(made) == 3
    for overlay in made:
        # the overlay's three files are gone at the slave
        for suffix in ('', '.meta', '.lease'):
            assert not os.path.exists(volume(site, site.slave, overlay['disk_id'],
                                             overlay['overlay'], suffix))
        # the base says LEAF, rewritten in place: same inode, one line changed
        path = volume(site, site.slave, overlay['disk_id'], overlay['base'], '.meta')
        assert meta_of(path)['VOLTYPE'] == 'LEAF'
        assert os.stat(path).st_ino == inodes[path]
        master_meta = volume(site, site.master, overlay['disk_id'], overlay['base'], '.meta')
        assert without_voltype(open(path, 'rb').read()) == \
            without_voltype(open(master_meta, 'rb').read())
    # the user's snapshot of db is still at the slave, under db's new leaf
    (db_overlay,) = [m for m in made if m['vm'] == 'db']
    assert meta_of(volume(site, site.slave, db_overlay['disk_id'], db_overlay['base'],
                          '.meta'))['PUUID'] != vmbackup.BLANK_UUID
    # verified: 4 disks of web, db and stopped
    assert 'verify: 4 disks of 3 VMs verified restorable' in result.err
    assert len(re.findall(r'verify: VM \S+ disk \S+: restorable', result.err)) == 4
    assert engine.events[-1]['severity'] == 'normal'
    assert engine.events[-1]['description'].endswith('4 disks of 3 VMs verified restorable')


def test_the_engines_periodic_ovf_write_during_the_run_is_put_back_at_the_slave(site):
    engine = site.engine
    build(site)
    engine.rewrite_ovf_store_after_snapshot()
    result = site.run()

    assert result.code == 0, result.output
    assert_invariants(site, result)
    # the periodic write did fire after the requested one, and the master's
    # store lists this run's snapshots with the overlays active
    assert [w['reason'] for w in writes(site)] == ['created', 'requested', 'periodic']
    made = this_runs_overlays(engine)
    periodic = writes(site)[-1]['vms']
    assert any(DESCRIPTION in text for text in periodic.values())
    assert 'was rewritten during the run' in result.err
    # the slave's newest store is the one written before the snapshots
    requested = writes(site)[1]['vms']
    assert newest_store_vms(site, site.slave) == requested
    for overlay in made:
        vm_id = engine.vm(overlay['vm'])['id']
        ovf = vmbackup.parse_ovf(vm_id, requested[vm_id])
        assert ovf.active[overlay['disk_id']] == overlay['base']
        assert overlay['overlay'] not in ovf.volumes[overlay['disk_id']]
        assert not [s for s in ovf.snapshots if s[2] == DESCRIPTION]
    # and the OVF store's files at the slave are the master's as written then
    for disk_id, volume_id in engine.ovf_stores(site.sd_id):
        meta = meta_of(volume(site, site.slave, disk_id, volume_id, '.meta'))
        assert json.loads(meta['DESCRIPTION'])['Last Updated'] == \
            writes(site)[1]['last_updated']


def ovf_events(site, code):
    return [e for e in site.engine.engine_events(code) if e['sd_id'] == site.sd_id]


def test_a_quiet_night_keeps_the_ovf_store_the_engine_has_as_current(site):
    # night 1; then the engine's hourly writer writes what night 1 changed
    # (its snapshot and merge), as it normally does long before night 2
    engine = site.engine
    build(site)
    assert site.run().code == 0
    engine.write_ovf_stores(site.sd_id)
    hourly = writes(site)[-1]
    requested = len(ovf_events(site, 199))
    result = site.run()

    assert result.code == 0, result.output
    assert_invariants(site, result)
    # the engine wrote nothing on request: nothing to update (event 1052)
    assert writes(site)[-1] is hourly
    assert len(ovf_events(site, 199)) == requested
    assert len(ovf_events(site, 1052)) == 1
    assert 'OVF store current, nothing to update' in result.err
    # the store kept and put back at the slave is the hourly one, with
    # the bases as active volumes, and the copy verified
    assert newest_store_vms(site, site.slave) == hourly['vms']
    assert 'verify: 4 disks of 3 VMs verified restorable' in result.err
    assert engine.events[-1]['severity'] == 'normal'


@pytest.mark.parametrize('fails, says', [
    ('error', r'storage domain vmstore-sd: the engine could not write its OVF store '
              r'\(event 190\)'),
    ('stuck', r'storage domain vmstore-sd: the engine did not say within 0.03 minutes '
              r'\(\[snapshot\] wait_timeout\) that its OVF store is written or current'),
], ids=['the-write-fails', 'the-engine-never-says'])
def test_a_domain_whose_ovf_store_was_not_kept_is_not_changed_at_the_slave(site, fails, says):
    engine = site.engine
    build(site)
    engine.ovf_store_fails = fails
    short = {'wait_timeout': '0.03', 'poll_interval': '0.1'} if fails == 'stuck' else {}
    result = site.run(config=site.config(snapshot=short) if short else None)

    assert result.code == 1, result.output
    assert_invariants(site, result)
    assert any(re.search(says, line) for line in errors(result)), result.err
    assert re.search(says, engine.events[-1]['description']), engine.events[-1]
    # the VMs were snapshotted and replicated, but nothing of their disks
    # changed at the slave: the overlays there, the bases INTERNAL
    made = this_runs_overlays(engine)
    assert len(made) == 3
    for overlay in made:
        assert os.path.exists(volume(site, site.slave, overlay['disk_id'], overlay['overlay']))
        assert meta_of(volume(site, site.slave, overlay['disk_id'], overlay['base'],
                              '.meta'))['VOLTYPE'] == 'INTERNAL'
    assert 'was not kept before the snapshots; nothing of it is changed' in result.err
    assert 'verify:' not in result.err


def test_a_vm_with_a_stale_snapshot_of_a_crashed_run_is_backed_up_on_its_real_base(site):
    engine = site.engine
    site.add_vm('web')
    shutil.copytree(str(site.master), str(site.slave), dirs_exist_ok=True)
    # the crashed run's snapshot, older than a run can take (-t 1), its
    # overlay the disk's image at step 4
    stale = engine.add_snapshot('web', DESCRIPTION, age=3600)
    (crashed,) = [m for m in engine.overlays if m['snapshot_id'] == stale]
    result = site.run('-t', '1')

    assert result.code == 0, result.output
    assert_invariants(site, result)
    assert 'left by an earlier run' in result.err
    # its removal was a live merge: the overlay deleted at the master, the
    # disk's image the base's again, and tonight's overlay made on that
    for suffix in ('', '.meta', '.lease'):
        assert not os.path.exists(volume(site, site.master, crashed['disk_id'],
                                         crashed['overlay'], suffix))
    (made,) = [m for m in this_runs_overlays(engine) if m['snapshot_id'] != stale]
    assert made['base'] == crashed['base']
    assert engine.vm('web')['disks'][0]['image_id'] == crashed['base']
    assert 'base %s confirmed at the remote site' % crashed['base'] in result.err
    assert meta_of(volume(site, site.slave, made['disk_id'], made['base'],
                          '.meta'))['VOLTYPE'] == 'LEAF'
    assert 'verify: 1 disk of 1 VM verified restorable' in result.err


CONFIRM_FAULTS = [
    # (behaviour of the scheduler, what the alert says)
    ({'copy': False}, r'base volume \S+\.meta is \d+ bytes at the slave, \d+ at the master'
                      r"|base volume \S+ at the slave is not the master's"),
    ({'keep_mtime': False}, r"base volume \S+ at the slave is not the master's \(modified"),
]


@pytest.mark.parametrize('behaviour, says', CONFIRM_FAULTS,
                         ids=['complete-without-syncing', 'a-copy-with-other-mtimes'])
def test_a_copy_that_is_not_the_masters_fails_the_run_and_nothing_at_the_slave_changes(
        site, behaviour, says):
    engine = site.engine
    build(site)
    site.behave(schedule_georep=behaviour)
    result = site.run()

    assert result.code == 1, result.output
    assert_invariants(site, result)
    made = this_runs_overlays(engine)
    for overlay in made:
        name = 'VM %s disk %s' % (overlay['vm'], overlay['disk_id'])
        line = [l for l in errors(result) if name in l and 'not confirmed' in l]
        assert line, (name, result.err)
        assert re.search(says, line[0]), line[0]
    event = engine.events[-1]
    assert event['severity'] == 'alert'
    assert 'not confirmed' in event['description']
    # the snapshots were removed all the same
    assert site.our_snapshots() == {}
    # nothing of those disks was changed at the slave: the overlays copied
    # are there
    for overlay in made if behaviour.get('copy', True) else ():
        assert os.path.exists(volume(site, site.slave, overlay['disk_id'], overlay['overlay']))


def test_a_session_that_says_complete_without_syncing_changes_not_one_byte_at_the_slave(site):
    before = build(site)
    site.behave(schedule_georep={'copy': False})
    result = site.run()
    assert result.code == 1, result.output
    assert tree(site.slave) == before
    assert 'verify:' not in result.err


# ----------------------------------------------------------------- --verify

def backed_up(site):
    build(site)
    result = site.run()
    assert result.code == 0, result.output
    return {overlay['vm']: overlay for overlay in this_runs_overlays(site.engine)}


def test_verify_alone_passes_on_a_good_copy_reads_only_and_needs_no_engine(site):
    backed_up(site)
    slave_before = tree(site.slave)
    requests = len(site.engine.requests)
    site.engine.stop()          # no engine at the DR site
    result = site.run('--verify')
    assert result.code == 0, result.output
    assert '4 disks of 3 VMs verified restorable' in result.err
    assert tree(site.slave) == slave_before
    assert len(site.engine.requests) == requests
    mount = site.mounts()[-1]
    assert '--read-only' in mount['argv']
    assert not any(a.startswith('--client-pid') for a in mount['argv'])
    assert_invariants(site, result)


def truncate_the_users_qcow2(site, made):
    overlay = made['db']
    user = site.engine.vm('db')['disks'][0]['image_id']     # the user's snapshot's leaf
    path = volume(site, site.slave, overlay['disk_id'], user)
    with open(path, 'r+b') as stream:
        stream.truncate(os.path.getsize(path) // 2 or 512)
    return overlay['disk_id'], 'qemu-img check'


def truncate_the_qcow2_base(site, made):
    overlay = made['db']
    disk = site.engine.vm('db')['disks'][0]
    path = volume(site, site.slave, overlay['disk_id'], disk['chain'][0])
    with open(path, 'r+b') as stream:
        stream.truncate(65536)
    return overlay['disk_id'], 'qemu-img check'


def remove_a_base(site, made):
    overlay = made['web']
    os.unlink(volume(site, site.slave, overlay['disk_id'], overlay['base']))
    return overlay['disk_id'], 'volumes'


def two_leaves(site, made):
    overlay = made['db']
    disk = site.engine.vm('db')['disks'][0]
    vmbackup.set_meta_key(volume(site, site.slave, overlay['disk_id'], disk['chain'][0],
                                 '.meta'), 'VOLTYPE', 'LEAF')
    return overlay['disk_id'], 'chain'


def no_leaf(site, made):
    overlay = made['web']
    vmbackup.set_meta_key(volume(site, site.slave, overlay['disk_id'], overlay['base'],
                                 '.meta'), 'VOLTYPE', 'INTERNAL')
    return overlay['disk_id'], 'chain'


def a_meta_cut_short(site, made):
    overlay = made['web']
    path = volume(site, site.slave, overlay['disk_id'], overlay['base'], '.meta')
    data = open(path, 'rb').read()
    with open(path, 'r+b') as stream:
        stream.truncate(len(data) // 2)
    return overlay['disk_id'], 'chain'


def an_overlay_left(site, made):
    overlay = made['web']
    for suffix in ('', '.meta', '.lease'):
        shutil.copyfile(volume(site, site.master, overlay['disk_id'], overlay['base'], suffix)
                        if suffix else os.devnull,
                        volume(site, site.slave, overlay['disk_id'], overlay['overlay'], suffix))
    return overlay['disk_id'], 'overlay'


def a_raw_base_cut_short(site, made):
    overlay = made['web']
    path = volume(site, site.slave, overlay['disk_id'], overlay['base'])
    with open(path, 'r+b') as stream:
        stream.truncate(512)
    return overlay['disk_id'], 'qemu-img info'


def an_ovf_store_with_a_backup_snapshot(site, made):
    engine = site.engine
    engine.add_snapshot('web', DESCRIPTION)
    engine.write_ovf_stores(site.sd_id)
    for path in ovf_store_paths(engine):
        if os.path.exists(os.path.join(str(site.master), path)):
            shutil.copyfile(os.path.join(str(site.master), path),
                            os.path.join(str(site.slave), path))
    return 'web', 'OVF store'


PLANTED = [truncate_the_users_qcow2, truncate_the_qcow2_base, remove_a_base, two_leaves,
           no_leaf, a_meta_cut_short, an_overlay_left, a_raw_base_cut_short,
           an_ovf_store_with_a_backup_snapshot]


@pytest.mark.parametrize('plant', PLANTED, ids=[p.__name__.replace('_', '-') for p in PLANTED])
def test_verify_names_the_disk_and_the_check_of_a_planted_fault(site, plant):
    made = backed_up(site)
    named, check = plant(site, made)
    result = site.run('--verify')
    assert result.code == 1, result.output
    lines = [l for l in errors(result) if 'verify: ' in l and named in l
             and ': %s: ' % check in l]
    assert lines, (named, check, result.err)
    assert 'failed verification' in result.err
    assert 'Traceback' not in result.output


def test_a_missing_qemu_img_is_one_line_at_start_up(site):
    site.add_vm('web')
    for args in ((), ('--verify',)):
        result = site.run(*args, config=site.config(verify={'qemu_img': '/nonexistent/qemu-img'}))
        assert result.code == 2, result.output
        (line,) = result.err.strip().splitlines()
        assert 'qemu-img (/nonexistent/qemu-img) is not there: install' in line
    assert site.engine.requests == [] and site.calls() == []


def test_verify_of_a_slave_that_cannot_be_mounted_is_one_line_and_exit_1(site):
    site.behave(glusterfs={'exit': 1})
    result = site.run('--verify')
    assert result.code == 1, result.output
    assert 'cannot mount the slave volume' in result.err
    assert_invariants(site, result)


# ------------------------------------------------------ the pure decisions

LEAF, INTERNAL, BLANK = 'LEAF', 'INTERNAL', vmbackup.BLANK_UUID
A, B, C = ('%08d-0000-0000-0000-000000000000' % n for n in (1, 2, 3))


@pytest.mark.parametrize('volumes, chain, problem', [
    ({A: (BLANK, LEAF)}, [A], None),
    ({A: (BLANK, INTERNAL), B: (A, LEAF)}, [A, B], None),
    ({A: (BLANK, INTERNAL), B: (A, INTERNAL), C: (B, LEAF)}, [A, B, C], None),
    ({A: (BLANK, INTERNAL)}, None, 'no LEAF volume'),
    ({A: (BLANK, LEAF), B: (A, LEAF)}, None, '2 LEAF volumes'),
    ({B: (A, LEAF)}, None, 'names parent %s, which is not there' % A),
    ({A: (B, INTERNAL), B: (A, LEAF)}, None, 'loop'),
    ({A: (BLANK, INTERNAL), B: (A, LEAF), C: (BLANK, INTERNAL)}, None, 'not on the chain'),
    ({A: (BLANK, LEAF), B: (A, LEAF)}, None, 'LEAF volumes'),
], ids=['one-volume', 'two', 'three', 'no-leaf', 'two-leaves', 'parent-missing', 'loop',
        'a-volume-off-the-chain', 'leaf-under-a-leaf'])
def test_a_chain_is_legal_only_from_one_leaf_down_to_the_blank_uuid(volumes, chain, problem):
    metas = {v: {'PUUID': parent, 'VOLTYPE': kind} for v, (parent, kind) in volumes.items()}
    found, why = vmbackup.leaf_chain(metas)
    assert found == chain
    if problem is None:
        assert why is None
    else:
        assert problem in why


def test_setting_voltype_changes_that_line_only_in_the_same_file(tmp_path):
    path = tmp_path / 'volume.meta'
    text = ('CAP=1048576\nCTIME=1\nDESCRIPTION={"DiskAlias":"VOLTYPE=INTERNAL"}\n'
            'DISKTYPE=DATA\nVOLTYPE=INTERNAL\nEOF\n')
    path.write_text(text)
    inode = path.stat().st_ino
    assert vmbackup.set_meta_key(str(path), 'VOLTYPE', 'LEAF') is True
    assert path.read_text() == text.replace('\nVOLTYPE=INTERNAL', '\nVOLTYPE=LEAF')
    assert path.stat().st_ino == inode
    assert vmbackup.set_meta_key(str(path), 'VOLTYPE', 'LEAF') is False


@pytest.mark.parametrize('data, problem', [
    (b'CAP=1\nVOLTYPE=LEAF\n', 'no EOF line'),
    (b'CAP=1\n\xff\xfe\nEOF\n', 'is not text'),
], ids=['cut-short', 'not-text'])
def test_a_meta_that_is_not_vdsms_format_is_refused(data, problem):
    with pytest.raises(vmbackup.MetaError, match=problem):
        vmbackup.parse_meta(data, 'x.meta')


def test_the_last_updated_of_the_engine_parses_without_its_zone():
    assert vmbackup.java_date('Thu Dec 10 08:44:48 UTC 2020') < \
        vmbackup.java_date('Fri Dec 11 01:02:03 CET 2020')
    assert vmbackup.java_date('yesterday') is None
