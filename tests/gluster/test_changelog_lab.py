"""Changelog mode, what production runs, in the real lab: run by hand.

    VMBACKUP_CHANGELOG_LAB=1 .venv/bin/python -m pytest tests/gluster/test_changelog_lab.py -s

Not part of `make test` (skipped without VMBACKUP_CHANGELOG_LAB=1): the
live changelog session it needs took 1 to more than 4 starts here (about
half of the starts are dead: gluster-notes.md, "Changelog mode and
sharding, measured"), so its run time is not bounded well enough for the
suite. Timings in NOTES.md.

The lab: both volumes sharded (4 MB shards), the master's
changelog.rollover-time 3, the session in changelog mode made live by
GeoRepLab.make_live() (probe file, restart until it arrives, then no config
change). The tool runs with changelog_stand_in.py as its scheduler (the real
one restarts the session every run, which rolls the dice again; see its
docstring), and the fake engine writing every `.meta` as vdsm does
(`.meta.new`, then rename: a new gfid at the master each time).
"""
import os
import pathlib
import sys
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))            # test_real_georep
sys.path.insert(0, str(HERE.parent))     # support

from support import georep  # noqa: E402
from test_real_georep import (SUFFIXES, World, assert_nothing_left,  # noqa: E402
                              note_time)

pytestmark = [pytest.mark.gluster, pytest.mark.xdist_group(name='gluster'),
              pytest.mark.skipif(os.environ.get('VMBACKUP_CHANGELOG_LAB') != '1',
                                 reason='run by hand: VMBACKUP_CHANGELOG_LAB=1')]

STAND_IN = HERE / 'changelog_stand_in.py'


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    reason = georep.skip_reason()
    if reason:
        pytest.skip(reason)
    start = time.monotonic()
    lab = georep.GeoRepLab(tmp_path_factory.mktemp('lab'), shard_block_size='4MB',
                           change_detector='changelog', rollover_time=3)
    with lab:
        note_time('changelog lab set-up', time.monotonic() - start)
        began = time.monotonic()
        starts = lab.make_live()
        note_time('live changelog session (%d starts)' % starts,
                  time.monotonic() - began)
        yield lab
    note_time('changelog module total', time.monotonic() - start)


def stand_in(lab, tmp_path, fail=False):
    path = tmp_path / ('stand_in_fail' if fail else 'stand_in')
    path.write_text('#!/bin/sh\nGEOREP_LAB_MASTER_MOUNT=%s exec python3 %s %s"$@"\n'
                    % (lab.master_mount, STAND_IN, '--fail ' if fail else ''))
    path.chmod(0o755)
    return str(path)


def gfid(path):
    return os.getxattr(str(path), 'trusted.gfid')


def overlays_at_slave(world, overlays):
    return [world.describe(world.rel(disk, overlay) + suffix)
            for (name, disk), (base, overlay) in overlays.items()
            for suffix in SUFFIXES
            if world.lab.slave_exists(world.rel(disk, overlay) + suffix)]


def test_two_nights_in_changelog_mode_the_renamed_meta_syncs_and_nothing_is_left(
        lab, engine, tmp_path):
    world = World(lab, engine, tmp_path)
    assert lab.crawl_status() == 'Changelog Crawl'
    code, output, night1 = world.run(3, 'changelog night 1',
                                     scheduler=stand_in(lab, tmp_path))
    assert code == 0, output
    assert_nothing_left(world, output)
    assert 'checkpoint of' in output and 'replica set 1 of 1' in output
    code, output, night2 = world.run(3, 'changelog night 2',
                                     scheduler=stand_in(lab, tmp_path))
    assert code == 0, output
    assert_nothing_left(world, output)
    assert lab.crawl_status() == 'Changelog Crawl'
    left = overlays_at_slave(world, {**night1, **night2})
    assert not left, 'overlays left at the slave:\n' + '\n'.join(left)
    # each base's .meta: renamed at the master by every vdsm write (a new
    # gfid), the rename replayed at the slave over the tool's in-place edit
    for (name, disk), (base, overlay) in night2.items():
        path = world.rel(disk, base) + '.meta'
        assert b'\nVOLTYPE=LEAF\n' in lab.read_slave(path)
        georep.wait_until(lambda: gfid(lab.slave_brick / path) ==
                          gfid(lab.master_brick / path), 60,
                          'the master .meta gfid at the slave: ' + path)
    assert 'verify: 4 disks of 3 VMs verified restorable' in output


def test_a_failed_night_then_a_good_one_leaves_a_clean_slave(lab, engine, tmp_path):
    world = World(lab, engine, tmp_path)
    code, output, failed = world.run(3, 'changelog, a failed night',
                                     scheduler=stand_in(lab, tmp_path, fail=True))
    assert code == 1, output
    assert_nothing_left(world, output)
    assert 'the remote site is left as it is' in output
    # the failed night's overlays reached the slave (the copy went on)
    georep.wait_until(lambda: len(overlays_at_slave(world, failed)) == 3 * len(failed),
                      60, "the failed night's overlays at the slave")
    code, output, good = world.run(3, 'changelog, the good night after',
                                   scheduler=stand_in(lab, tmp_path))
    assert code == 0, output
    assert_nothing_left(world, output)
    # the merges deleted the failed night's overlays at the master; changelog
    # mode replayed the unlinks at the slave before this night's checkpoint
    left = overlays_at_slave(world, {**failed, **good})
    assert not left, 'overlays left at the slave:\n' + '\n'.join(left)
    master = lab.master_tree()
    with lab.mount_slave(client_pid=None) as slave:
        at_slave = georep.tree(slave, skip=georep.BRICK_INTERNAL)
    ours = [p for p in at_slave if p.startswith(world.sd_id + '/')]
    extra = [world.describe(p) for p in ours if p not in master]
    assert not extra, 'at the slave, not at the master:\n' + '\n'.join(extra)
    assert 'verify: 4 disks of 3 VMs verified restorable' in output
