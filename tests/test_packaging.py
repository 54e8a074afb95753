"""What the RPM, the systemd units and the man page ship: built from this
tree as `make rpm` builds them, and checked with the tools an administrator
would use (rpm -qp, systemd-analyze verify, man -l)."""
import configparser
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from support.site import PYTHON, VMBACKUP

ROOT = VMBACKUP.parent
DIST = ROOT / 'dist'
sys.path.insert(0, str(DIST))

import manpage  # noqa: E402


def source_version():
    """The VERSION literal of vmbackup.py, read as setuptools and the spec
    read it: without importing the module."""
    match = re.search(r"^VERSION = '([^']+)'$", VMBACKUP.read_text(), re.M)
    assert match, 'vmbackup.py has no VERSION = \'...\' line'
    return match.group(1)


def needs_command(command, package):
    """Make sure command is on PATH: make test installs what it tests with
    (Debian's package, with apt-get) on a machine that lacks it."""
    if shutil.which(command):
        return
    if not shutil.which('apt-get'):
        pytest.fail('%s is missing and there is no apt-get to install %s'
                    % (command, package))
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    install = ['apt-get', '-o', 'DPkg::Lock::Timeout=600', 'install',
               '-y', '-q', '--no-install-recommends', package]
    process = run(install, env=env)
    if process.returncode != 0:       # a new machine has no package lists
        run(['apt-get', '-o', 'DPkg::Lock::Timeout=600', 'update', '-qq'],
            env=env)
        process = run(install, env=env)
    assert process.returncode == 0 and shutil.which(command), \
        'apt-get install %s: %s' % (package, process.stderr[-2000:])


def run(command, **kwargs):
    return subprocess.run([str(part) for part in command],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300, **kwargs)


# --- the man page -------------------------------------------------------------

@pytest.fixture(scope='module')
def man_roff(tmp_path_factory):
    process = run([sys.executable, DIST / 'manpage.py', VMBACKUP])
    assert process.returncode == 0, process.stderr
    return process.stdout


def render(roff, directory):
    """Given roff text, return what `man -l` shows of it (and its stderr)."""
    needs_command('man', 'man-db')
    page = directory / 'vmbackup.8'
    page.write_text(roff)
    env = dict(os.environ, MANWIDTH='100', COLUMNS='100', LC_ALL='C.UTF-8',
               MANPAGER='cat', PAGER='cat')
    process = run(['man', '-l', page], env=env)
    assert process.returncode == 0, process.stderr
    return process.stdout, process.stderr


def help_entries(help_text):
    """Given `--help` output, return [(invocation, help)] of every argument,
    e.g. ('-c CONFIG, --config CONFIG', 'path to the config file')."""
    entries, in_arguments = [], False
    for line in help_text.splitlines():
        if re.match(r'^\S.*:$', line):
            in_arguments = line.rstrip(':').endswith(('arguments', 'options'))
            continue
        if not in_arguments or not line.strip():
            continue
        entry = re.match(r'^  (\S.*?)(?:\s{2,}(\S.*))?$', line)
        if entry:
            entries.append([entry.group(1), entry.group(2) or ''])
        elif entries:
            entries[-1][1] = (entries[-1][1] + ' ' + line.strip()).strip()
    return [tuple(entry) for entry in entries]


def missing_from_man(shown, help_text):
    """Given what man -l shows and what --help prints, return the arguments
    of --help whose invocation line or help text the man page lacks."""
    lines = [line.strip() for line in shown.splitlines()]
    flat = ' '.join(shown.split())

    def tagged(invocation):
        # a paragraph tag: on a line of its own, or before the text when
        # the tag is short (`SLAVE  HOST, root@HOST ...`)
        return any(line == invocation or line.startswith(invocation + '  ')
                   for line in lines)
    return [invocation for invocation, text in help_entries(help_text)
            if not tagged(invocation) or ' '.join(text.split()) not in flat]


@pytest.fixture(scope='module')
def help_text():
    process = run([PYTHON, VMBACKUP, '--help'])
    assert process.returncode == 0, process.stderr
    return process.stdout


def test_the_man_page_shows_every_argument_that_help_shows(
        man_roff, help_text, tmp_path):
    shown, errors = render(man_roff, tmp_path)
    entries = help_entries(help_text)
    assert len(entries) >= 10, help_text       # the parse found them
    assert missing_from_man(shown, help_text) == []
    assert errors == ''                         # no roff warnings
    assert 'vmbackup - back up the disk images' in shown
    assert 'The steps of a run' in shown


def test_the_man_page_check_notices_an_argument_left_out(
        man_roff, help_text, tmp_path):
    # drop the entry of --exclude from the OPTIONS section
    cut = re.sub(r'\.TP\n\.B \\-\\-exclude NAME\n[^\n]*\n', '', man_roff)
    assert cut != man_roff
    shown, _ = render(cut, tmp_path)
    assert missing_from_man(shown, help_text) == ['--exclude NAME']


def test_roff_escaping_keeps_options_and_leading_dots_literal():
    assert manpage.escape('--dry-run') == '\\-\\-dry\\-run'
    assert manpage.escape('.meta and\n.lease') == '\\&.meta and\n\\&.lease'
    assert manpage.escape('C:\\x') == 'C:\\ex'


# --- the systemd units --------------------------------------------------------

UNITS = ('vmbackup@.service', 'vmbackup@.timer')


def verify_units(directory, texts):
    """Given {unit file name: text}, write the units into directory with
    /usr/bin/vmbackup pointing at this tree's vmbackup.py (systemd-analyze
    checks that the command exists and is executable) and the environment
    file at directory/vmstore.env; return what systemd-analyze verify says
    about the instance vmstore (nothing when all is well)."""
    needs_command('systemd-analyze', 'systemd')
    for name, text in texts.items():
        text = text.replace('/usr/bin/vmbackup', str(VMBACKUP))
        text = text.replace('/etc/vmbackup/%i.env', str(directory / '%i.env'))
        (directory / name).write_text(text)
    shutil.copy(str(DIST / 'vmbackup.env.example'), str(directory / 'vmstore.env'))
    process = run(['systemd-analyze', 'verify', '--man=no']
                  + [directory / name.replace('@.', '@vmstore.')
                     for name in texts])
    problems = (process.stdout + process.stderr).strip()
    if process.returncode != 0 and not problems:
        problems = 'exit %d' % process.returncode
    return problems


def shipped_units():
    return {name: (DIST / name).read_text() for name in UNITS}


def test_the_shipped_units_pass_systemd_analyze_verify(tmp_path):
    assert verify_units(tmp_path, shipped_units()) == ''


@pytest.mark.parametrize('unit, old, new, expected', [
    ('vmbackup@.service', 'KillMode=mixed', 'KilMode=mixed', "Unknown key 'KilMode'"),
    ('vmbackup@.service', 'ExecStart=/usr/bin/vmbackup',
     'ExecStart=/usr/bin/vmbackup-nonexistent', 'is not executable'),
    ('vmbackup@.timer', 'OnCalendar=*-*-* 01:30:00', 'OnCalendar=nightly at one',
     'Failed to parse calendar specification'),
])
def test_the_unit_check_fails_on_a_broken_unit(tmp_path, unit, old, new,
                                                expected):
    units = shipped_units()
    assert old in units[unit]
    units[unit] = units[unit].replace(old, new)
    assert expected in verify_units(tmp_path, units)


def test_the_service_runs_the_installed_command_with_what_the_env_file_sets():
    service = (DIST / 'vmbackup@.service').read_text()
    exec_start = re.search(r'^ExecStart=(.*)$', service, re.M).group(1)
    assert exec_start.split()[:2] == ['/usr/bin/vmbackup', '%i']
    used = set(re.findall(r'\$\{?(\w+)\}?', exec_start))
    example = (DIST / 'vmbackup.env.example').read_text()
    defined = set(re.findall(r'^(\w+)=', example, re.M))
    assert used == defined == {'SLAVE', 'SLAVEVOL', 'OPTIONS'}
    assert re.search(r'^OPTIONS=.*-t [1-9]', example, re.M), \
        'the example must give -t: 0 waits for ever'
    assert re.search(r'^TimeoutStopSec=(\d+)min$', service, re.M)
    assert int(re.search(r'^TimeoutStopSec=(\d+)min$', service,
                         re.M).group(1)) >= 15


def test_the_cron_file_runs_nothing_until_edited():
    lines = (DIST / 'vmbackup.cron').read_text().splitlines()
    assert all(line.startswith('#') for line in lines if line.strip())
    commented = [line for line in lines if '/usr/bin/vmbackup ' in line]
    assert len(commented) == 1
    fields = commented[0].lstrip('#').split()
    assert fields[5:7] == ['root', '/usr/bin/vmbackup']


def test_logrotate_rotates_the_file_that_logging_conf_writes():
    logging_conf = configparser.ConfigParser(interpolation=None)
    logging_conf.read(str(ROOT / 'logging.conf.example'))
    handler = logging_conf['handler_logfile']
    # a handler that rotates by itself would fight logrotate
    assert handler['class'] == 'logging.handlers.WatchedFileHandler'
    path = re.match(r"\('([^']+)'", handler['args']).group(1)
    logrotate = (DIST / 'vmbackup.logrotate').read_text()
    assert re.search(r'^%s \{$' % re.escape(path), logrotate, re.M)


# --- the RPM ------------------------------------------------------------------

@pytest.fixture(scope='module')
def rpm(tmp_path_factory, man_roff):
    top = tmp_path_factory.mktemp('rpm')
    page = top / 'vmbackup.8'
    page.write_text(man_roff)
    # installed here, so that build-rpm's own install (apt-get's lines on
    # its stderr) does not spoil the check that rpmbuild says nothing
    needs_command('rpmbuild', 'rpm')
    process = run([DIST / 'build-rpm', page, top / 'rpmbuild'])
    assert process.returncode == 0, process.stderr
    built = process.stdout.split()
    assert len(built) == 1, process.stdout
    assert process.stderr == '', process.stderr
    return pathlib.Path(built[0])


def rpm_query(package, *args):
    process = run(['rpm', '-qp'] + list(args) + [package])
    assert process.returncode == 0, process.stderr
    return process.stdout


# path -> mode, as an administrator gets them
EXPECTED_FILES = {
    '/usr/bin/vmbackup': '-rwxr-xr-x',
    '/etc/vmbackup': 'drwx------',
    '/etc/vmbackup/backup.cfg': '-rw-------',
    '/etc/vmbackup/logging.conf': '-rw-r--r--',
    '/etc/cron.d/vmbackup': '-rw-r--r--',
    '/etc/logrotate.d/vmbackup': '-rw-r--r--',
    '/usr/lib/systemd/system/vmbackup@.service': '-rw-r--r--',
    '/usr/lib/systemd/system/vmbackup@.timer': '-rw-r--r--',
    '/usr/share/man/man8/vmbackup.8.gz': '-rw-r--r--',
    '/usr/share/doc/vmbackup': 'drwxr-xr-x',
    '/usr/share/doc/vmbackup/README.md': '-rw-r--r--',
    '/usr/share/doc/vmbackup/docs': 'drwxr-xr-x',
    '/usr/share/doc/vmbackup/docs/monitoring.md': '-rw-r--r--',
    '/usr/share/doc/vmbackup/docs/restore.md': '-rw-r--r--',
    '/usr/share/doc/vmbackup/vmbackup.env.example': '-rw-r--r--',
    '/usr/share/doc/vmbackup/vmbackup.rules.yml': '-rw-r--r--',
    '/usr/share/licenses/vmbackup': 'drwxr-xr-x',
    '/usr/share/licenses/vmbackup/LICENSE': '-rw-r--r--',
    '/var/lib/vmbackup': 'drwxr-xr-x',
    '/var/log/vmbackup': 'drwxr-x---',
}


def test_the_rpm_installs_these_files_with_these_modes(rpm):
    listed = rpm_query(rpm, '-l').split()
    modes = dict(line.split() for line in rpm_query(
        rpm, '--qf', '[%{FILENAMES} %{FILEMODES:perms}\n]').splitlines())
    assert sorted(listed) == sorted(EXPECTED_FILES)
    assert modes == EXPECTED_FILES
    owners = set(rpm_query(rpm, '--qf', '[%{FILEUSERNAME}:%{FILEGROUPNAME}\n]')
                 .split())
    assert owners == {'root:root'}


def test_the_config_files_are_kept_across_upgrades(rpm):
    flags = dict(line.split(None, 1) for line in rpm_query(
        rpm, '--qf', '[%{FILENAMES} %{FILEFLAGS:fflags}\n]').splitlines()
        if len(line.split()) == 2)
    for path in ('/etc/vmbackup/backup.cfg', '/etc/vmbackup/logging.conf',
                 '/etc/cron.d/vmbackup', '/etc/logrotate.d/vmbackup'):
        assert flags.get(path) == 'cn', path     # %config(noreplace)
    assert flags['/usr/share/licenses/vmbackup/LICENSE'] == 'l'
    assert flags['/usr/share/doc/vmbackup/README.md'] == 'd'


def test_the_rpm_requires_the_sdk_gluster_qemu_img_and_ssh(rpm):
    requires = {line.split()[0] for line in
                rpm_query(rpm, '--requires').splitlines()}
    for package in ('python3-ovirt-engine-sdk4', 'glusterfs-geo-replication',
                    'glusterfs-fuse', 'glusterfs-cli', 'qemu-img',
                    'openssh-clients', 'logrotate', 'crontabs',
                    '/usr/bin/python3'):
        assert package in requires


def test_the_rpm_is_noarch_and_has_the_version_of_vmbackup_py(rpm):
    assert rpm_query(rpm, '--qf', '%{NAME} %{VERSION} %{ARCH}') == \
        'vmbackup %s noarch' % source_version()
    assert rpm.name == 'vmbackup-%s-1.noarch.rpm' % source_version()


def test_the_packaged_command_is_vmbackup_py_on_the_system_python(rpm, tmp_path):
    needs_command('cpio', 'cpio')
    cpio = subprocess.Popen(['rpm2cpio', str(rpm)], stdout=subprocess.PIPE)
    extract = subprocess.run(['cpio', '-idm', '--quiet'], stdin=cpio.stdout,
                             cwd=str(tmp_path), timeout=60)
    cpio.stdout.close()
    assert cpio.wait(60) == 0 and extract.returncode == 0
    packaged = (tmp_path / 'usr/bin/vmbackup').read_text().splitlines(True)
    source = VMBACKUP.read_text().splitlines(True)
    assert packaged[0] == '#!/usr/bin/python3\n'
    assert packaged[1:] == source[1:]
    assert (tmp_path / 'etc/vmbackup/backup.cfg').read_bytes() == \
        (ROOT / 'backup.cfg.example').read_bytes()
