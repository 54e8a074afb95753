"""Issue 17: the lock's directory and file, and the bound on every access to
storage, without a run."""
import os
import stat
import threading

import pytest

import vmbackup


def test_the_private_lock_directory_is_made_for_this_user_alone(tmp_path):
    path = str(tmp_path / 'vmbackup')
    vmbackup.make_private_directory(path)
    info = os.lstat(path)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.geteuid()
    vmbackup.make_private_directory(path)      # there already: fine


def planted_directory(path):
    os.mkdir(path)
    os.chmod(path, 0o777)


def planted_symlink(path):
    os.symlink('/tmp', path)


def given_away(path):
    if os.geteuid() != 0:
        pytest.skip('only root can give a directory away')
    os.mkdir(path, 0o700)
    os.chown(path, 4321, -1)


@pytest.mark.parametrize('plant', [planted_directory, planted_symlink, given_away],
                         ids=['open to everyone', 'a symlink', "another user's"])
def test_a_lock_directory_another_user_may_have_planted_is_refused(tmp_path, plant):
    path = str(tmp_path / 'vmbackup')
    plant(path)
    with pytest.raises(vmbackup.StorageFailed) as raised:
        vmbackup.make_private_directory(path)
    assert 'rm -r %s' % path in str(raised.value)


def test_the_lock_file_is_never_opened_through_a_symlink(tmp_path):
    target = tmp_path / 'elsewhere'
    target.write_text('kept\n')
    link = tmp_path / 'vmbackup-vmstore.lock'
    link.symlink_to(target)
    with pytest.raises(vmbackup.StorageFailed) as raised:
        vmbackup.open_lock_file(str(link))
    assert 'is a symlink' in str(raised.value)
    assert target.read_text() == 'kept\n'


def test_a_new_lock_file_is_for_its_owner_alone(tmp_path):
    path = tmp_path / 'vmbackup-vmstore.lock'
    with vmbackup.open_lock_file(str(path)) as handle:
        handle.write('{}\n')
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_an_access_that_does_not_return_is_left_behind_with_one_clear_error():
    release = threading.Event()
    try:
        with pytest.raises(vmbackup.Hung) as raised:
            vmbackup.bounded(release.wait, 0.1, 'the lock directory /x')
        assert str(raised.value) == ('no answer from the lock directory /x within 0.1 '
                                     'seconds ([lock] storage_timeout): is its mount hung?')
        assert vmbackup.storage_left_hung()
    finally:
        release.set()


def test_an_access_that_returns_gives_its_value_or_its_error():
    assert vmbackup.bounded(lambda: 42, 5, 'x') == 42
    with pytest.raises(FileNotFoundError):
        vmbackup.bounded(lambda: os.stat('/nonexistent/x'), 5, 'x')
