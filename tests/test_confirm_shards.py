"""The confirm of step 6 covers every shard: geo-replication's checkpoint
seen complete, while the session ran, on an Active worker of every replica
set of the master (`gluster volume geo-replication status detail --xml`,
read by the tool while the scheduler runs), plus the content compared; and
changelog mode's deletions at the slave over two nights. Against the fake
gluster CLI (which answers `status detail --xml` and `volume info --xml` as
10.3 does) and the fake scheduler (which writes the workers' state while it
"runs")."""
import importlib.util
import os
import re

import pytest

from support.site import DESCRIPTION, VMBACKUP, assert_invariants, needs_root, tree

pytestmark = needs_root

spec = importlib.util.spec_from_file_location('vmbackup_under_test', str(VMBACKUP))
vmbackup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vmbackup)

# `gluster --mode=script volume geo-replication status detail --xml` as
# GlusterFS 10.3 printed it in the lab (tests/gluster), a session running
# after its checkpoint completed; trimmed of nothing but the XML declaration
REAL_STATUS_DETAIL = """<cliOutput>
  <opRet>0</opRet>
  <opErrno>0</opErrno>
  <opErrstr>primary not found</opErrstr>
  <geoRep>
    <volume>
      <name>georeplab-master</name>
      <sessions>
        <session>
          <session_secondary>e53ce353-548b-40cb-b763-56e2932a4f9c:ssh://vm::georeplab-slave:dbeede29-1ff3-45c0-bf67-1b87695993d6</session_secondary>
          <pair>
            <primary_node>vm</primary_node>
            <primary_brick>/tmp/lab-explore/work2/bricks/georeplab-master</primary_brick>
            <secondary_user>root</secondary_user>
            <secondary>ssh://vm::georeplab-slave</secondary>
            <secondary_node>vm</secondary_node>
            <status>Active</status>
            <crawl_status>Hybrid Crawl</crawl_status>
            <entry>0</entry>
            <data>0</data>
            <meta>0</meta>
            <failures>0</failures>
            <checkpoint_completed>Yes</checkpoint_completed>
            <primary_node_uuid>e53ce353-548b-40cb-b763-56e2932a4f9c</primary_node_uuid>
            <last_synced>2026-12-06 21:22:49</last_synced>
            <checkpoint_time>2026-12-06 21:21:31</checkpoint_time>
            <checkpoint_completion_time>2026-12-06 21:22:49</checkpoint_completion_time>
          </pair>
        </session>
      </sessions>
    </volume>
  </geoRep>
</cliOutput>
"""
CHECKPOINT = 1796592091     # 2026-12-06 21:21:31 UTC


def errors(result):
    return [line for line in result.err.splitlines() if ' ERROR ' in line]


def this_runs_overlays(engine):
    return [made for made in engine.overlays if made['description'] == DESCRIPTION]


# ------------------------------------------------------------ the rule itself

def test_the_real_status_detail_shows_the_checkpoint_complete_on_its_brick():
    pairs = vmbackup.session_pairs(REAL_STATUS_DETAIL, 'georeplab-master',
                                   'root@vm', 'georeplab-slave')
    assert len(pairs) == 1
    sets = [['vm:/tmp/lab-explore/work2/bricks/georeplab-master']]
    assert set(vmbackup.completed_sets(sets, pairs, CHECKPOINT)) == {0}
    # a checkpoint set before this run's start is not this run's
    assert vmbackup.completed_sets(sets, pairs, CHECKPOINT + 1) == {}
    # another session of the same master is not ours
    assert vmbackup.session_pairs(REAL_STATUS_DETAIL, 'georeplab-master',
                                  'vm', 'other-slave') == []


@pytest.mark.parametrize('status, completed', [
    ('Initializing...', 'N/A'), ('Passive', 'N/A'), ('Active', 'No'),
    ('Faulty', 'N/A'), ('Stopped', 'N/A')])
def test_only_an_active_worker_with_the_checkpoint_complete_counts(status, completed):
    text = (REAL_STATUS_DETAIL.replace('<status>Active', '<status>' + status)
            .replace('<checkpoint_completed>Yes', '<checkpoint_completed>' + completed))
    pairs = vmbackup.session_pairs(text, 'georeplab-master', 'vm', 'georeplab-slave')
    sets = [['vm:/tmp/lab-explore/work2/bricks/georeplab-master']]
    assert vmbackup.completed_sets(sets, pairs, CHECKPOINT) == {}


def test_a_status_that_gluster_could_not_give_is_no_poll():
    assert vmbackup.session_pairs(REAL_STATUS_DETAIL.replace(
        '<opRet>0', '<opRet>-1'), 'georeplab-master', 'vm', 'georeplab-slave') is None
    assert vmbackup.session_pairs('Connection failed.', 'm', 'h', 's') is None


# ------------------------------------------------------- whole runs, the fakes

def test_a_backup_rests_on_the_checkpoint_seen_on_every_replica_set(site):
    site.add_vm('web')
    site.behave(gluster={'bricks': ['n%d.example.com:/b/vmstore' % n for n in (1, 2, 3, 4, 5, 6)],
                         'replica': 3})
    result = site.run()
    assert result.code == 0, result.output
    assert_invariants(site, result)
    for number, brick in ((1, 'n1.example.com:/b/vmstore'), (2, 'n4.example.com:/b/vmstore')):
        assert re.search(r'checkpoint of \S+ \S+ UTC completed at \S+ \S+ UTC on %s '
                         r'\(replica set %d of 2\)' % (re.escape(brick), number),
                         result.err), result.err
    # read while the scheduler ran, without a master volume: no volume lock
    # that could make the scheduler's own stop fail
    reads = [c['argv'] for c in site.calls('gluster') if 'detail' in c['argv']]
    assert reads and all(argv == ['--mode=script', 'volume', 'geo-replication', 'status',
                                  'detail', '--xml'] for argv in reads)


@pytest.mark.parametrize('behaviour, says', [
    # the real scheduler's exit 0 with no Active worker (0 == 0)
    ({'checkpoint': False}, r'replica set 1 \(n1\S+ n2\S+ n3\S+\)'),
    # one replica set without an Active worker: its bricks never synced
    ({'passive_sets': [1]}, r'replica set 2 \(n4\S+ n5\S+ n6\S+\) while'),
], ids=['no-active-worker', 'a-replica-set-not-synced'])
def test_a_checkpoint_not_seen_complete_everywhere_fails_every_disk_and_changes_nothing(
        site, behaviour, says):
    site.add_vm('web', disks=2)
    site.behave(gluster={'bricks': ['n%d.example.com:/b/vmstore' % n for n in (1, 2, 3, 4, 5, 6)],
                         'replica': 3},
                schedule_georep=behaviour)
    result = site.run()
    assert result.code == 1, result.output
    assert_invariants(site, result)
    assert re.search("the copy at the remote site is not confirmed: geo-replication's "
                     'checkpoint was not seen complete on an Active worker of ' + says,
                     result.err), result.err
    made = this_runs_overlays(site.engine)
    assert len(made) == 2
    for overlay in made:
        assert re.search(r'VM web disk %s: the copy at the remote site is not confirmed: '
                         r"geo-replication's checkpoint was not seen complete"
                         % overlay['disk_id'], result.err), result.err
        # nothing of the disk was changed at the slave: the overlay is there
        assert os.path.exists(os.path.join(str(site.slave), site.sd_id, 'images',
                                           overlay['disk_id'], overlay['overlay']))
    assert 'verify:' not in result.err


def test_a_later_shard_that_did_not_reach_the_slave_fails_that_disk_only(site):
    """Size and mtime the master's, one byte past the first MiB not: what a
    stale shard past the first looks like through a mount."""
    site.engine.add_vm('web', disks=[dict(sd=site.sd_id, content=os.urandom(3 << 20)),
                                     dict(sd=site.sd_id, content=os.urandom(3 << 20))])
    stale_disk = site.engine.vm('web')['disks'][1]
    stale_base = stale_disk['chain'][0]
    at = (2 << 20) + 12345
    site.behave(schedule_georep={'stale': {'path': stale_base, 'at': at}})
    result = site.run()
    assert result.code == 1, result.output
    assert_invariants(site, result)
    (line,) = [l for l in errors(result) if 'not confirmed' in l and 'VM web disk' in l]
    assert ('VM web disk %s: the copy at the remote site is not confirmed: base volume %s '
            'differs from the master at the slave from byte %d'
            % (stale_disk['id'], stale_base, at)) in line, line
    good = site.engine.vm('web')['disks'][0]
    assert 'VM web disk %s: base %s confirmed at the remote site' % (
        good['id'], good['chain'][0]) in result.err


def test_a_big_base_is_compared_by_its_first_and_last_block(tmp_path, monkeypatch):
    monkeypatch.setattr(vmbackup, 'CONTENT_FULL_LIMIT', 4096)
    monkeypatch.setattr(vmbackup, 'CONTENT_BLOCK', 1024)
    data = bytearray(os.urandom(10000))
    master, slave = tmp_path / 'master', tmp_path / 'slave'
    master.write_bytes(bytes(data))
    for at, seen in ((5000, False), (100, True), (9999, True)):
        changed = bytearray(data)
        changed[at] ^= 0xff
        slave.write_bytes(bytes(changed))
        problem = vmbackup.content_problem(str(master), str(slave), len(data))
        assert (problem is not None) == seen, (at, problem)
        if seen:
            assert 'from byte %d' % at in problem


# ------------------------------------------- changelog mode over two nights

def overlay_files(site, made):
    return [os.path.join(str(site.slave), site.sd_id, 'images', m['disk_id'],
                         m['overlay'] + suffix)
            for m in made for suffix in ('', '.meta', '.lease')]


def test_changelog_mode_two_nights_the_merges_deletion_reaches_the_slave(site):
    """Night 1's overlays are deleted at the slave by the tool; the merge
    deletes them at the master; night 2 (changelog mode replays unlinks)
    leaves no file at the slave that the master does not have but this
    night's overlays, which the tool drops."""
    site.add_vm('web', disks=2)
    site.behave(schedule_georep={'changelog': True})
    first = site.run()
    assert first.code == 0, first.output
    night1 = this_runs_overlays(site.engine)
    second = site.run()
    assert second.code == 0, second.output
    assert_invariants(site, second)
    night2 = this_runs_overlays(site.engine)[len(night1):]
    assert len(night2) == 2
    assert [p for p in overlay_files(site, night1 + night2) if os.path.exists(p)] == []
    master, slave = tree(site.master), tree(site.slave)
    assert sorted(slave) == sorted(master)
    assert 'verify: 2 disks of 1 VM verified restorable' in second.err


def test_a_failed_night_then_a_good_one_leaves_a_clean_slave(site):
    site.add_vm('web', disks=2)
    site.behave(schedule_georep={'changelog': True, 'exit': 1, 'copy': True})
    failed = site.run()
    assert failed.code == 1, failed.output
    assert_invariants(site, failed)
    night1 = this_runs_overlays(site.engine)
    # the failed night's copy reached the slave, overlays and all
    assert all(os.path.exists(p) for p in overlay_files(site, night1))
    site.behave(schedule_georep={'changelog': True})
    good = site.run()
    assert good.code == 0, good.output
    assert_invariants(site, good)
    night2 = this_runs_overlays(site.engine)[len(night1):]
    assert [p for p in overlay_files(site, night1 + night2) if os.path.exists(p)] == []
    assert sorted(tree(site.slave)) == sorted(tree(site.master))
    assert 'verify: 2 disks of 1 VM verified restorable' in good.err


def test_the_fake_engine_writes_a_meta_as_vdsm_does_new_file_then_rename(site):
    """vdsm fileVolume.py FileVolumeManifest._putMetadata: <vol>.meta.new,
    then rename: a snapshot's VOLTYPE=INTERNAL on the base is a new inode
    (a new gfid on gluster), and no .meta.new is left."""
    site.add_vm('web')
    (disk,) = site.engine.vm('web')['disks']
    meta = os.path.join(str(site.master), site.sd_id, 'images', disk['id'],
                        disk['chain'][0] + '.meta')
    before = os.stat(meta).st_ino
    site.engine.add_snapshot('web', 'a user snapshot')
    assert os.stat(meta).st_ino != before
    assert 'VOLTYPE=INTERNAL' in open(meta).read()
    assert not os.path.exists(meta + '.new')


def test_a_completion_the_scheduler_stopped_before_a_read_counts_on_the_active_worker_just_before(
        site):
    """The real scheduler stops the session right after its own poll read
    the checkpoint complete: the tool's last read may show the worker Active
    with it not yet complete. Read within ACTIVE_WINDOW seconds before the
    scheduler's COMPLETE, that counts (a dying worker shows Faulty longer)."""
    site.add_vm('web')
    site.behave(schedule_georep={'complete_unseen': True})
    result = site.run()
    assert result.code == 0, result.output
    assert_invariants(site, result)
    assert re.search(r"replica set 1 of 1 \(\S+\) had an Active worker on this run's "
                     r'checkpoint \d+ s before the scheduler read it complete', result.err), \
        result.err
