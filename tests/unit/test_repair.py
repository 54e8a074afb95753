"""The repair at the slave (step 7) in a temporary directory: what of a
disk's image stops it before anything is deleted (the base's .meta, the
overlay's), what it counts, and the OVF store put back where the engine
rewrote it. test_meta_edit.py has the .meta edit itself and the symlinks."""
import argparse
import logging
import os
import uuid

import pytest

import vmbackup

SD, DISK, BASE, OVERLAY = (str(uuid.uuid4()) for _ in range(4))
OVERLAY_FILES = sorted([OVERLAY, OVERLAY + '.lease', OVERLAY + '.meta'])


def meta(**values):
    """A .meta as vdsm writes it: KEY=value lines, then EOF."""
    fields = dict(CAP='1048576', DESCRIPTION='{}', DISKTYPE='DATA', DOMAIN=SD, FORMAT='RAW',
                  IMAGE=DISK, PUUID=vmbackup.BLANK_UUID, VOLTYPE='INTERNAL')
    fields.update(values)
    return (''.join('%s=%s\n' % item for item in sorted(fields.items())) + 'EOF\n').encode()


class Image:
    """A disk's image at the slave: the base and this run's overlay on it."""

    def __init__(self, root):
        self.root = root
        self.dir = root / SD / 'images' / DISK
        self.dir.mkdir(parents=True)
        self.write(BASE, b'\0' * 512, meta())
        self.write(OVERLAY, b'QFI\xfb', meta(FORMAT='COW', PUUID=BASE, VOLTYPE='LEAF'))
        self.disk = vmbackup.DiskRecord(sd_id=SD, disk_id=DISK, base_id=BASE,
                                        overlay_id=OVERLAY)
        self.files = {'looked up': 0, 'deleted': 0}

    def write(self, volume, data, meta_data):
        (self.dir / volume).write_bytes(data)
        (self.dir / (volume + '.lease')).write_bytes(b'')
        (self.dir / (volume + '.meta')).write_bytes(meta_data)

    def repair(self):
        return vmbackup.repair_chain(str(self.root), self.disk, self.files)

    def overlay_files(self):
        return sorted(name for name in os.listdir(str(self.dir)) if name.startswith(OVERLAY))

    def base_meta(self):
        return (self.dir / (BASE + '.meta')).read_bytes()


@pytest.fixture
def image(tmp_path):
    return Image(tmp_path)


def test_a_repair_drops_the_three_overlay_files_and_counts_them(image):
    assert image.repair() is None
    assert image.overlay_files() == []
    assert image.base_meta() == meta(VOLTYPE='LEAF')
    assert image.files == {'looked up': 3, 'deleted': 3}
    assert (image.disk.overlay_dropped, image.disk.chain_repaired) == (True, True)


def test_a_base_that_is_the_leaf_already_stays_so(image):
    image.write(BASE, b'\0' * 512, meta(VOLTYPE='LEAF'))
    assert image.repair() is None
    assert image.base_meta() == meta(VOLTYPE='LEAF') and image.overlay_files() == []


def test_an_overlay_not_at_the_slave_is_a_warning_and_the_base_the_leaf(image, caplog):
    for name in OVERLAY_FILES:
        (image.dir / name).unlink()
    with caplog.at_level(logging.WARNING, logger='vmbackup'):
        assert image.repair() is None
    assert image.base_meta() == meta(VOLTYPE='LEAF')
    assert image.files == {'looked up': 0, 'deleted': 0}
    assert [r.getMessage() for r in caplog.records] == [
        'overlay %s of disk %s is not at the remote site' % (OVERLAY, DISK)]


def test_an_overlay_lease_already_gone_is_no_problem(image):
    (image.dir / (OVERLAY + '.lease')).unlink()
    assert image.repair() is None
    assert image.files == {'looked up': 3, 'deleted': 2}


@pytest.mark.parametrize('base_meta, problem', [
    (None, 'cannot read the base .meta at the slave: '),
    (meta(IMAGE=str(uuid.uuid4())), 'the base .meta at the slave says IMAGE='),
    (meta(DOMAIN='elsewhere'), 'the base .meta at the slave says DOMAIN=elsewhere; left alone'),
    (meta(VOLTYPE='SHARED'), 'the base .meta at the slave says VOLTYPE=SHARED; left alone'),
    (b'\xff\xfe', 'cannot read the base .meta at the slave: '),
], ids=['missing', 'another-image', 'another-domain', 'a-template-volume', 'not-vdsms'])
def test_a_base_meta_that_is_not_this_disks_leaves_everything_alone(image, base_meta,
                                                                    problem):
    if base_meta is None:
        (image.dir / (BASE + '.meta')).unlink()
    else:
        (image.dir / (BASE + '.meta')).write_bytes(base_meta)
    found = image.repair()
    assert found.startswith(problem), found
    assert image.overlay_files() == OVERLAY_FILES
    assert image.disk.overlay_dropped is None and image.disk.chain_repaired is None


@pytest.mark.parametrize('overlay_meta, problem', [
    (meta(FORMAT='COW', PUUID=str(uuid.uuid4()), VOLTYPE='LEAF'),
     'the overlay .meta at the slave says PUUID='),
    (meta(FORMAT='COW', PUUID=BASE, VOLTYPE='INTERNAL'),
     'the overlay .meta at the slave says VOLTYPE=INTERNAL, not what the engine said; '
     'left alone'),
    (meta(FORMAT='COW', PUUID=BASE, VOLTYPE='LEAF', IMAGE='x'),
     'the overlay .meta at the slave says IMAGE=x, not what the engine said; left alone'),
    (b'\xff\xfe', 'cannot read the overlay .meta at the slave: '),
], ids=['another-parent', 'not-a-leaf', 'another-image', 'not-text'])
def test_an_overlay_meta_that_is_not_the_engines_leaves_everything_alone(image, overlay_meta,
                                                                         problem):
    (image.dir / (OVERLAY + '.meta')).write_bytes(overlay_meta)
    found = image.repair()
    assert found.startswith(problem), found
    assert image.overlay_files() == OVERLAY_FILES
    assert image.base_meta() == meta()


def test_an_overlay_without_its_meta_is_left_alone(image):
    (image.dir / (OVERLAY + '.meta')).unlink()
    assert image.repair() == ('overlay %s is at the slave without its .meta; left alone'
                              % OVERLAY)
    assert image.overlay_files() == sorted([OVERLAY, OVERLAY + '.lease'])
    assert image.base_meta() == meta()


def test_an_overlay_file_that_is_not_a_regular_file_stops_the_repair(image):
    (image.dir / (OVERLAY + '.lease')).unlink()
    (image.dir / (OVERLAY + '.lease')).mkdir()
    found = image.repair()
    assert found == '%s.lease at the slave is not a regular file; left alone' % OVERLAY
    assert image.base_meta() == meta()          # the base stays INTERNAL


def test_a_disk_whose_ids_are_not_uuids_is_refused_before_any_file(image):
    image.disk.overlay_id = '../../etc'
    with pytest.raises(vmbackup.MetaError, match="'../../etc' is not a UUID"):
        image.repair()
    assert image.overlay_files() == OVERLAY_FILES


def test_repair_chains_fails_the_run_naming_each_disk_not_repaired(tmp_path, caplog):
    good = Image(tmp_path / 'a')
    bad = Image(tmp_path / 'b')
    (bad.root / SD / 'images' / DISK / (BASE + '.meta')).write_bytes(meta(VOLTYPE='SHARED'))
    run = vmbackup.Run(argparse.Namespace(mastervol='vmstore'), vmbackup.Settings(),
                       vmbackup.Stop())
    web = vmbackup.VmBackup(name='web')
    db = vmbackup.VmBackup(name='db')
    with caplog.at_level(logging.INFO, logger='vmbackup'):
        for backup, image in ((web, good), (db, bad)):
            vmbackup.repair_chains(run, str(image.root), [(backup, image.disk)])
    assert run.failures == ['VM db disk %s: the base .meta at the slave says VOLTYPE=SHARED; '
                            'left alone' % DISK]
    assert bad.disk.problem == run.failures[0].split(': ', 1)[1]
    assert good.disk.problem is None and good.overlay_files() == []
    said = [r.getMessage() for r in caplog.records]
    assert 'deleted 3 overlay files at the remote site (3 paths looked up)' in said
    assert 'repaired 1 of 1 chains at the remote site' in said
    assert 'repaired 0 of 1 chains at the remote site' in said


def test_the_first_key_not_as_expected_is_named():
    values = {'IMAGE': 'i', 'VOLTYPE': 'LEAF'}
    assert vmbackup.meta_mismatch(values, IMAGE='i', VOLTYPE='LEAF') is None
    assert vmbackup.meta_mismatch(values, VOLTYPE='INTERNAL', IMAGE='j') == 'IMAGE=i'
    assert vmbackup.meta_mismatch(values, PUUID='p') == 'PUUID=(none)'


# the OVF store put back ---------------------------------------------------------------------

STORE_DISK, STORE_VOLUME = str(uuid.uuid4()), str(uuid.uuid4())


def ovf_slave(tmp_path, data, meta_data):
    directory = tmp_path / SD / 'images' / STORE_DISK
    directory.mkdir(parents=True)
    (directory / STORE_VOLUME).write_bytes(data)
    (directory / (STORE_VOLUME + '.meta')).write_bytes(meta_data)
    return directory


def kept_store(data=b'the tar of before' + b'\0' * 15, meta_data=meta(DISKTYPE='OVFS')):
    return vmbackup.OvfStore(sd_id=SD, disk_id=STORE_DISK, volume_id=STORE_VOLUME,
                             meta=meta_data, data=data,
                             last_updated='Thu Dec 03 01:30:02 UTC 2026')


def restore_run():
    return vmbackup.Run(argparse.Namespace(mastervol='vmstore'), vmbackup.Settings(),
                        vmbackup.Stop())


def test_a_store_the_engine_rewrote_during_the_run_is_put_back_in_place(tmp_path, caplog):
    rewritten = b'the tar of after, longer than before' + b'\0' * 64
    directory = ovf_slave(tmp_path, rewritten, meta(DISKTYPE='OVFS', CAP='2'))
    inode = (directory / STORE_VOLUME).stat().st_ino
    store = kept_store()
    run = restore_run()
    with caplog.at_level(logging.INFO, logger='vmbackup'):
        vmbackup.restore_ovf_stores(run, str(tmp_path), [store], [('vm', 'disk')])
    data = (directory / STORE_VOLUME).read_bytes()
    # the tar of before over the head of the volume, its size kept
    assert data[:len(store.data)] == store.data and len(data) == len(rewritten)
    assert (directory / (STORE_VOLUME + '.meta')).read_bytes() == store.meta
    assert (directory / STORE_VOLUME).stat().st_ino == inode
    assert run.failures == []
    assert 'OVF store at the remote site: 1 of 1 volumes put back' in caplog.text
    assert 'put back the one written before the snapshots (Thu Dec 03 01:30:02 UTC ' \
           '2026)' in caplog.text


def test_a_store_as_it_was_kept_is_not_written(tmp_path, caplog):
    store = kept_store()
    directory = ovf_slave(tmp_path, store.data + b'\0' * 100, store.meta)
    os.utime(str(directory / STORE_VOLUME), ns=(10 ** 18, 10 ** 18))
    before = (directory / STORE_VOLUME).stat().st_mtime_ns
    run = restore_run()
    with caplog.at_level(logging.INFO, logger='vmbackup'):
        vmbackup.restore_ovf_stores(run, str(tmp_path), [store], [('vm', 'disk')])
    assert (directory / STORE_VOLUME).stat().st_mtime_ns == before
    assert run.failures == []
    assert 'OVF store at the remote site: 0 of 1 volumes put back' in caplog.text


@pytest.mark.parametrize('kept, confirmed', [([], [('vm', 'disk')]), (None, [])])
def test_nothing_is_put_back_without_a_store_kept_or_a_disk_confirmed(tmp_path, kept,
                                                                      confirmed):
    directory = ovf_slave(tmp_path, b'after', meta(DISKTYPE='OVFS'))
    run = restore_run()
    vmbackup.restore_ovf_stores(run, str(tmp_path), [kept_store()] if kept is None else kept,
                                confirmed)
    assert (directory / STORE_VOLUME).read_bytes() == b'after'
    assert run.failures == []


def test_a_store_missing_at_the_slave_fails_the_run_naming_it(tmp_path):
    run = restore_run()
    vmbackup.restore_ovf_stores(run, str(tmp_path), [kept_store()], [('vm', 'disk')])
    (failure,) = run.failures
    assert failure.startswith('cannot restore OVF store %s at the remote site: ' % STORE_VOLUME)
    assert 'No such file or directory' in failure
