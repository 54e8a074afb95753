"""The lock is cluster-wide on gluster's shared storage: an flock taken
through one FUSE mount of a volume excludes a run that locks through another
client's mount of the same volume. On this one machine, two mounts of the
lab's master volume stand in for the shared storage of two nodes; the
engine and the scheduler are the fakes (only the lock is under test)."""
import pathlib
import sys
import uuid

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))            # georep
sys.path.insert(0, str(HERE.parent))     # conftest, fake_engine

import georep  # noqa: E402
from conftest import Result, assert_invariants, wait_for  # noqa: E402

pytestmark = [pytest.mark.gluster, pytest.mark.xdist_group(name='gluster')]


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    reason = georep.skip_reason()
    if reason:
        pytest.skip(reason)
    with georep.GeoRepLab(tmp_path_factory.mktemp('lab')) as lab:
        yield lab


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
