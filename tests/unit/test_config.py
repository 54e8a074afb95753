"""The config file, read by its one table (vmbackup.CONFIG_KEYS): the
defaults, each kind of value, each check's line, unknown and missing keys
(parse_config, which looks at nothing on the machine), then what this
machine has to say (check_machine, in tmp_path), then read_config whole.
Also the command line's checks and the man page's CONFIGURATION."""
import configparser
import importlib.util
import logging
import os
import pathlib
import stat

import pytest

import vmbackup

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_PATH = '/etc/vmbackup/backup.cfg'
ENGINE = ('[connection]\nserver = https://engine.example.com/ovirt-engine/api\n'
          'user_name = admin@internal\npassword = Pa55-w0rd\n')
ENTRIES = {(entry.section, entry.key): entry for entry in vmbackup.CONFIG_KEYS}


def parse(text='', needs_engine=False, storage_limit=None, path=CONFIG_PATH):
    """Given a config file's text, return parse_config's (settings, problems)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return vmbackup.parse_config(parser, path, needs_engine, storage_limit)


def read_key(section, key, text):
    """Given one key's text, return (its setting, the problems)."""
    settings, problems = parse('[%s]\n%s = %s\n' % (section, key, text))
    return getattr(settings, ENTRIES[section, key].attribute), problems


def only_problem(section, key, text):
    value, problems = read_key(section, key, text)
    assert value == ENTRIES[section, key].default     # a bad value: the default
    (problem,) = problems
    return problem


# the table ------------------------------------------------------------------

def test_the_table_names_each_key_once_and_each_setting_once():
    pairs = [(entry.section, entry.key) for entry in vmbackup.CONFIG_KEYS]
    attributes = [entry.attribute for entry in vmbackup.CONFIG_KEYS]
    assert len(set(pairs)) == len(pairs)
    assert len(set(attributes)) == len(attributes)


def test_the_known_keys_and_the_settings_come_from_the_table():
    assert vmbackup.KNOWN_KEYS['restore_points'] == {'keep', 'ssh', 'host', 'gluster'}
    assert set(vmbackup.KNOWN_KEYS) == {entry.section for entry in vmbackup.CONFIG_KEYS}
    assert set(vmbackup.Settings.DEFAULTS) == {
        entry.attribute for entry in vmbackup.CONFIG_KEYS} | {'lock_is_shared'}


@pytest.mark.parametrize('section, key, attribute', [
    ('status', 'dir', 'status_dir'), ('restore_points', 'keep', 'restore_keep'),
    ('restore_points', 'ssh', 'restore_ssh'), ('restore_points', 'host', 'restore_host'),
    ('restore_points', 'gluster', 'restore_gluster'), ('lock', 'lock_dir', 'lock_dir'),
])
def test_a_key_lands_in_its_setting(section, key, attribute):
    assert ENTRIES[section, key].attribute == attribute


@pytest.mark.parametrize('entry', vmbackup.CONFIG_KEYS,
                         ids=['%s.%s' % (e.section, e.key) for e in vmbackup.CONFIG_KEYS])
def test_every_key_left_out_takes_its_default(entry):
    settings, problems = parse(ENGINE if entry.section != 'connection' else '')
    assert problems == []
    if not entry.required:
        assert getattr(settings, entry.attribute) == entry.default
    assert vmbackup.Settings().__dict__[entry.attribute] == entry.default


def test_the_defaults_are_todays():
    settings, _ = parse()
    assert (settings.timeout, settings.connections, settings.wait_timeout,
            settings.poll_interval, settings.skip_within, settings.storage_timeout,
            settings.ping_timeout, settings.scheduler_grace,
            settings.mount_timeout) == (300, 4, 10.0, 5.0, 720.0, 60.0, 10.0, 300, 120)
    assert (settings.insecure, settings.presync, settings.require_quiesce) == (
        False, False, False)
    assert settings.presync_timeout is None          # the same as -t
    assert settings.restore_ssh == ['ssh', '-o', 'BatchMode=yes']
    assert settings.restore_gluster == ['gluster'] and settings.restore_keep == 0
    assert (settings.glusterfs, settings.gluster, settings.master_server,
            settings.qemu_img) == ('/usr/sbin/glusterfs', '/usr/sbin/gluster',
                                   'localhost', 'qemu-img')
    assert settings.password == '' and settings.lock_dir is None


def test_a_default_list_is_not_shared_between_settings():
    first, _ = parse()
    first.restore_ssh.append('-v')
    second, _ = parse()
    assert second.restore_ssh == ['ssh', '-o', 'BatchMode=yes']
    assert vmbackup.Settings().restore_ssh == ['ssh', '-o', 'BatchMode=yes']


# each kind of value ---------------------------------------------------------

@pytest.mark.parametrize('section, key, text, expected', [
    ('event', 'cluster', 'Default', 'Default'),
    ('gluster', 'master_server', 'gluster1.example.com', 'gluster1.example.com'),
    ('connection', 'timeout', '30', 30),
    ('connection', 'connections', '64', 64),
    ('snapshot', 'wait_timeout', '0.5', 0.5),
    ('snapshot', 'wait_timeout', '2', 2.0),
    ('gluster', 'presync_timeout', '0', 0),
    ('lock', 'skip_within', '0', 0.0),
    ('restore_points', 'keep', '256', 256),
    ('restore_points', 'ssh', 'ssh -p 2222 -o "IdentityFile=/root/dr key"',
     ['ssh', '-p', '2222', '-o', 'IdentityFile=/root/dr key']),
    ('restore_points', 'gluster', '/usr/sbin/gluster', ['/usr/sbin/gluster']),
    ('restore_points', 'host', 'root@dr1.example.com', 'root@dr1.example.com'),
    ('status', 'ping_url', 'https://hc-ping.com/x', 'https://hc-ping.com/x'),
    ('status', 'textfile_dir', '/var/lib/node_exporter', '/var/lib/node_exporter'),
    # a relative path is the config file's directory's
    ('status', 'textfile_dir', 'metrics', '/etc/vmbackup/metrics'),
    ('gluster', 'glusterfs', '../bin/glusterfs', '/etc/vmbackup/../bin/glusterfs'),
    ('connection', 'ca_file', '~/ca.pem', os.path.expanduser('~/ca.pem')),
    # an empty key is its default
    ('connection', 'timeout', '', 300),
    ('restore_points', 'ssh', '', ['ssh', '-o', 'BatchMode=yes']),
    ('gluster', 'mount_log', '', vmbackup.DEFAULT_MOUNT_LOG),
])
def test_each_kind_of_value_is_read(section, key, text, expected):
    assert read_key(section, key, text) == (expected, [])


@pytest.mark.parametrize('text', ['yes', 'Yes', 'true', 'on', '1'])
def test_yes_is_true(text):
    assert read_key('snapshot', 'require_quiesce', text) == (True, [])


@pytest.mark.parametrize('text', ['no', 'NO', 'false', 'off', '0'])
def test_no_is_false(text):
    assert read_key('gluster', 'presync', text) == (False, [])


def test_the_password_is_taken_as_it_is_and_never_shown():
    settings, problems = parse(ENGINE.replace('Pa55-w0rd', '%(not interpolated)s'),
                               needs_engine=True)
    assert problems == [] and settings.password == '%(not interpolated)s'
    assert 'not interpolated' not in repr(settings)


@pytest.mark.parametrize('section, key, text, line', [
    ('connection', 'timeout', 'soon', "[connection] timeout = 'soon' is not a whole number"),
    ('connection', 'timeout', '1.5', "[connection] timeout = '1.5' is not a whole number"),
    ('snapshot', 'wait_timeout', 'ten', "[snapshot] wait_timeout = 'ten' is not a number"),
    ('connection', 'insecure', 'maybe', "[connection] insecure = 'maybe' must be yes or no"),
    ('restore_points', 'ssh', "ssh -o 'BatchMode=yes",
     '[restore_points] ssh = "ssh -o \'BatchMode=yes" is not a command line: '
     'No closing quotation'),
    ('restore_points', 'host', 'root@-oProxyCommand=x',
     "[restore_points] host = 'root@-oProxyCommand=x' is not HOST or user@HOST"),
    ('status', 'ping_url', 'https://[::1', "[status] ping_url = 'https://[::1' is not an "
                                          'http(s) URL'),
    ('status', 'ping_url', 'ftp://example.com/x', "[status] ping_url = 'ftp://example.com/x' "
                                                 'is not an http(s) URL'),
])
def test_a_value_of_the_wrong_kind_is_one_line_naming_the_key(section, key, text, line):
    assert only_problem(section, key, text) == line


# each check of a range ------------------------------------------------------

RANGED = [entry for entry in vmbackup.CONFIG_KEYS
          if isinstance(entry.check, vmbackup.Within)]


@pytest.mark.parametrize('entry', RANGED, ids=['%s.%s' % (e.section, e.key) for e in RANGED])
def test_each_range_takes_its_bounds_and_refuses_past_them(entry):
    check = entry.check
    assert read_key(entry.section, entry.key, str(check.maximum)) == (check.maximum, [])
    assert only_problem(entry.section, entry.key, str(check.maximum + 1)) == (
        '[%s] %s = %d must be at most %d%s' % (entry.section, entry.key,
                                                check.maximum + 1, check.maximum, check.why))
    if check.zero:
        assert read_key(entry.section, entry.key, '0') == (0, [])
        assert only_problem(entry.section, entry.key, '-1') == (
            '[%s] %s = -1 must be 0 or more' % (entry.section, entry.key))
    else:
        assert only_problem(entry.section, entry.key, '0') == (
            '[%s] %s = 0 must be more than 0' % (entry.section, entry.key))


@pytest.mark.parametrize('section, key, text, line', [
    ('connection', 'timeout', '0', '[connection] timeout = 0 must be more than 0'),
    ('connection', 'timeout', str(10 ** 30),
     '[connection] timeout = %d must be at most 604800' % 10 ** 30),
    # past a float's range: a line, not an OverflowError
    pytest.param('connection', 'timeout', str(10 ** 400),
                 '[connection] timeout = %d must be at most 604800' % 10 ** 400,
                 id='connection-timeout-past-a-float'),
    ('connection', 'connections', '100000', '[connection] connections = 100000 must be at most 64'),
    ('snapshot', 'wait_timeout', '-1', '[snapshot] wait_timeout = -1 must be more than 0'),
    ('snapshot', 'wait_timeout', 'inf', '[snapshot] wait_timeout = inf must be more than 0'),
    ('snapshot', 'wait_timeout', '1e12', '[snapshot] wait_timeout = 1e12 must be at most 43200'),
    ('snapshot', 'poll_interval', 'nan', '[snapshot] poll_interval = nan must be more than 0'),
    ('lock', 'skip_within', '-inf', '[lock] skip_within = -inf must be 0 or more'),
    ('lock', 'storage_timeout', '3601', '[lock] storage_timeout = 3601 must be at most 3600'),
    ('status', 'ping_timeout', '1e300', '[status] ping_timeout = 1e300 must be at most 604800'),
    ('restore_points', 'keep', '-1', '[restore_points] keep = -1 must be 0 or more'),
    ('restore_points', 'keep', '300', "[restore_points] keep = 300 must be at most 256 "
                                      "(gluster's snap-max-hard-limit)"),
])
def test_a_value_out_of_range_is_one_line_naming_the_key(section, key, text, line):
    assert only_problem(section, key, text) == line


def test_every_problem_is_named_at_once_in_the_tables_order():
    _, problems = parse('[connection]\ntimeout = x\n[snapshot]\nwait_timeout = 0\n'
                        '[restore_points]\nkeep = 999\n')
    assert [problem.split(' =')[0] for problem in problems] == [
        '[connection] timeout', '[snapshot] wait_timeout', '[restore_points] keep']


# the keys that depend on others ---------------------------------------------

@pytest.mark.parametrize('server, insecure, expected, problem', [
    ('https://e.example.com/ovirt-engine/api', 'no', 'https://e.example.com/ovirt-engine/api',
     None),
    # the 2016 tool's URL is the v4 API's
    ('https://e.example.com/api', 'no', 'https://e.example.com/ovirt-engine/api', None),
    ('https://e.example.com:8443/', 'no', 'https://e.example.com:8443/ovirt-engine/api', None),
    ('http://e.example.com/ovirt-engine/api', 'yes', 'http://e.example.com/ovirt-engine/api',
     None),
    ('http://e.example.com/ovirt-engine/api', 'no', None, 'is not https'),
    ('engine.example.com', 'no', None, 'is not an https://ENGINE/ovirt-engine/api URL'),
    ('https://e:99999/', 'no', None, 'is not an https://ENGINE/ovirt-engine/api URL'),
])
def test_the_server_url_is_checked_with_insecure(server, insecure, expected, problem):
    settings, problems = parse('[connection]\nserver = %s\ninsecure = %s\n' % (server, insecure))
    if problem is None:
        assert (settings.server, problems) == (expected, [])
    else:
        (line,) = problems
        assert line.startswith('[connection] server = %r ' % server) and problem in line


def test_insecure_drops_the_ca_file():
    settings, _ = parse('[connection]\nca_file = ca.pem\ninsecure = yes\n')
    assert settings.ca_file is None
    settings, _ = parse('[connection]\nca_file = ca.pem\n')
    assert settings.ca_file == '/etc/vmbackup/ca.pem'


def test_the_storage_limit_caps_storage_timeout():
    assert parse(storage_limit=4.0)[0].storage_timeout == 4.0
    assert parse('[lock]\nstorage_timeout = 2\n', storage_limit=4.0)[0].storage_timeout == 2.0


# unknown and missing keys ---------------------------------------------------

def test_an_unknown_section_or_key_is_a_warning_only(caplog):
    with caplog.at_level(logging.WARNING, logger='vmbackup'):
        settings, problems = parse('[conection]\nserver = x\n[lock]\nskip_witin = 5\n')
    assert problems == [] and settings.skip_within == 720.0
    assert [record.getMessage() for record in caplog.records] == [
        'config file %s: unknown section [conection] ignored' % CONFIG_PATH,
        'config file %s: unknown key [lock] skip_witin ignored' % CONFIG_PATH]


@pytest.mark.parametrize('text, lines', [
    (ENGINE, []),
    (ENGINE.replace('user_name = admin@internal\n', ''), ['[connection] user_name is missing']),
    (ENGINE.replace('admin@internal', ''), ['[connection] user_name is empty']),
    (ENGINE.replace('password = Pa55-w0rd\n', ''), ['[connection] password is missing']),
    (ENGINE.replace('Pa55-w0rd', ''), ['[connection] password is empty']),
    ('[connection]\n', ['[connection] server is missing', '[connection] user_name is missing',
                        '[connection] password is missing']),
    # the section's absence is told by the keys before the password
    ('', ['[connection] section is missing (it needs server)',
          '[connection] section is missing (it needs user_name)']),
])
def test_the_engines_keys_are_required_for_a_run(text, lines):
    assert parse(text, needs_engine=True)[1] == lines


def test_without_the_engine_nothing_is_required():
    settings, problems = parse('', needs_engine=False)
    assert problems == [] and settings.server is None and settings.password == ''


# what the machine says: check_machine ---------------------------------------

@pytest.fixture
def machine(tmp_path, monkeypatch):
    """Programs that exist in tmp_path, and no shared storage."""
    monkeypatch.setattr(vmbackup, 'shared_storage_dir', lambda: None)
    for name in ('glusterfs', 'gluster', 'schedule_georep'):
        program = tmp_path / name
        program.write_text('#!/bin/sh\n')
        program.chmod(0o755)
    return tmp_path


def machine_settings(machine, **values):
    """Given the fixture's directory, Settings as parse_config leaves them,
    naming its programs."""
    fields = dict(glusterfs=str(machine / 'glusterfs'), gluster=str(machine / 'gluster'),
                  schedule_georep=str(machine / 'schedule_georep'))
    fields.update(values)
    return vmbackup.Settings(**fields)


def test_a_machine_with_everything_has_no_problems(machine):
    settings = machine_settings(machine)
    assert vmbackup.check_machine(settings) == []
    assert settings.schedule_georep == [str(machine / 'schedule_georep')]
    assert (settings.lock_dir, settings.lock_is_shared, settings.status_dir) == (
        vmbackup.FALLBACK_LOCK_DIR, False, vmbackup.FALLBACK_STATUS_DIR)


def test_shared_storage_holds_the_lock_and_the_status_by_default(machine, monkeypatch):
    monkeypatch.setattr(vmbackup, 'shared_storage_dir', lambda: str(machine))
    settings = machine_settings(machine)
    assert vmbackup.check_machine(settings) == []
    assert (settings.lock_dir, settings.lock_is_shared, settings.status_dir) == (
        str(machine / 'vmbackup'), True, str(machine / 'vmbackup'))


@pytest.mark.parametrize('on_gluster, needs_engine, shared', [
    (True, True, True), (False, True, False), (True, False, False)])
def test_a_lock_dir_named_is_shared_when_it_is_on_gluster(
        machine, monkeypatch, on_gluster, needs_engine, shared):
    monkeypatch.setattr(vmbackup, 'is_gluster_mount', lambda path: on_gluster)
    settings = machine_settings(machine, lock_dir=str(machine))
    assert vmbackup.check_machine(settings, needs_engine) == []
    assert (settings.lock_dir, settings.lock_is_shared) == (str(machine), shared)


@pytest.mark.parametrize('make, line', [
    (lambda s, d: s.__setattr__('ca_file', str(d / 'absent.pem')),
     '[connection] ca_file {d}/absent.pem does not exist'),
    (lambda s, d: s.__setattr__('logger_conf', str(d / 'absent.conf')),
     '[logging] logger_conf {d}/absent.conf does not exist'),
    (lambda s, d: s.__setattr__('glusterfs', str(d / 'absent')),
     '[gluster] glusterfs {d}/absent is not an executable file (install '
     'glusterfs-fuse / glusterfs-client, or name it)'),
    (lambda s, d: (d / 'gluster').chmod(0o644),
     '[gluster] gluster {d}/gluster is not an executable file (install '
     'glusterfs-cli / glusterfs-cli, or name it)'),
    (lambda s, d: s.__setattr__('schedule_georep', str(d / 'absent.py')),
     '[gluster] schedule_georep: {d}/absent.py does not exist'),
    (lambda s, d: s.__setattr__('schedule_georep', 'no-such-scheduler --x'),
     '[gluster] schedule_georep: no-such-scheduler is not on PATH'),
    (lambda s, d: s.__setattr__('schedule_georep', '"unclosed'),
     '[gluster] schedule_georep cannot be split: No closing quotation'),
    (lambda s, d: s.__setattr__('lock_dir', str(d / 'absent')),
     '[lock] lock_dir {d}/absent is not a directory'),
    (lambda s, d: s.__setattr__('lock_dir', str(d / 'gluster')),
     '[lock] lock_dir {d}/gluster is not a directory'),
    (lambda s, d: s.__setattr__('status_dir', str(d / 'gluster')),
     '[status] dir {d}/gluster is not a directory'),
    (lambda s, d: s.__setattr__('textfile_dir', str(d / 'gluster')),
     '[status] textfile_dir {d}/gluster is not a directory'),
])
def test_each_file_the_config_names_is_looked_at(machine, make, line):
    settings = machine_settings(machine)
    make(settings, machine)
    assert vmbackup.check_machine(settings) == [line.format(d=machine)]


def test_a_missing_status_directory_is_made_later_not_refused(machine):
    settings = machine_settings(machine, status_dir=str(machine / 'status'),
                                textfile_dir=str(machine / 'metrics'))
    assert vmbackup.check_machine(settings) == []


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads any file')
def test_an_unreadable_ca_file_is_refused(machine):
    ca_file = machine / 'ca.pem'
    ca_file.write_text('')
    ca_file.chmod(0)
    settings = machine_settings(machine, ca_file=str(ca_file))
    assert vmbackup.check_machine(settings) == [
        '[connection] ca_file %s is not readable' % ca_file]


def test_without_the_engine_the_files_of_a_run_are_not_looked_for(machine):
    settings = machine_settings(machine, ca_file='/absent/ca.pem', glusterfs='/absent',
                                schedule_georep='/absent.py', lock_dir='/absent')
    assert vmbackup.check_machine(settings, needs_engine=False) == []
    assert settings.schedule_georep is None


def test_the_scheduler_is_found_where_the_distribution_installs_it(machine, monkeypatch):
    installed = machine / 'lib' / 'x86_64' / 'schedule_georep.py'
    installed.parent.mkdir(parents=True)
    installed.write_text('')
    monkeypatch.setattr(vmbackup, 'SCHEDULER_CANDIDATES', (
        str(machine / 'absent' / '*.py'), str(machine / 'lib' / '*' / 'schedule_georep.py')))
    settings = machine_settings(machine, schedule_georep=None)
    assert vmbackup.check_machine(settings) == []
    assert settings.schedule_georep[1:] == [str(installed)]
    assert os.path.basename(settings.schedule_georep[0]).startswith('python3')
    monkeypatch.setattr(vmbackup, 'SCHEDULER_CANDIDATES', (str(machine / 'absent'),))
    settings = machine_settings(machine, schedule_georep=None)
    (problem,) = vmbackup.check_machine(settings)
    assert problem.startswith('no schedule_georep.py found in %s' % (machine / 'absent'))


# read_config: the file, parsed, then the machine ---------------------------

def config_file(directory, text, mode=0o600):
    path = directory / 'backup.cfg'
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_read_config_names_the_problems_of_the_text_and_of_the_machine_at_once(machine):
    path = config_file(machine, ENGINE + '[snapshot]\nwait_timeout = 0\n[gluster]\n'
                       'glusterfs = absent\ngluster = gluster\nschedule_georep = %s\n'
                       '[lock]\nlock_dir = %s\n' % (machine / 'schedule_georep', machine))
    with pytest.raises(vmbackup.UsageError) as raised:
        vmbackup.read_config(path)
    assert str(raised.value) == (
        'config file %s: [snapshot] wait_timeout = 0 must be more than 0; [gluster] '
        'glusterfs %s/absent is not an executable file (install glusterfs-fuse / '
        'glusterfs-client, or name it)' % (path, machine))


def test_read_config_returns_the_settings(machine, monkeypatch):
    monkeypatch.setattr(vmbackup, 'is_gluster_mount', lambda path: False)
    path = config_file(machine, ENGINE + '[gluster]\nglusterfs = glusterfs\n'
                       'gluster = gluster\nschedule_georep = %s\n'
                       '[lock]\nlock_dir = .\n[status]\ndir = status\n'
                       % (machine / 'schedule_georep'))
    settings = vmbackup.read_config(path, storage_limit=4.0)
    assert (settings.server, settings.user_name, settings.password) == (
        'https://engine.example.com/ovirt-engine/api', 'admin@internal', 'Pa55-w0rd')
    assert settings.lock_dir == str(machine) + '/.'
    assert settings.status_dir == str(machine / 'status')
    assert settings.storage_timeout == 4.0
    assert settings.schedule_georep == [str(machine / 'schedule_georep')]


@pytest.mark.parametrize('text, mode, expected', [
    ('[connection\n', 0o600, 'is not a valid INI file'),
    ('server = x\n', 0o600, 'is not a valid INI file'),
    ('', 0o620, 'can be changed by its group'),
    ('', 0o602, 'can be changed by every user'),
])
def test_read_config_refuses_a_broken_or_open_file(machine, text, mode, expected):
    with pytest.raises(vmbackup.UsageError) as raised:
        vmbackup.read_config(config_file(machine, text, mode), needs_engine=False)
    assert expected in str(raised.value)


def test_read_config_warns_of_a_password_others_can_read(machine, caplog):
    path = config_file(machine, '', 0o644)
    with caplog.at_level(logging.WARNING, logger='vmbackup'):
        vmbackup.read_config(path, needs_engine=False)
    assert 'is readable by every user and holds the engine password: chmod 600' in caplog.text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


# the command line's checks --------------------------------------------------

@pytest.mark.parametrize('argv, line', [
    (['vmstore', '-c', 'x'], 'SLAVE and SLAVEVOL are needed'),
    (['vmstore', 'dr', '-c', 'x', '--status'], '--status and --check take SLAVE and '
                                               'SLAVEVOL both'),
    (['vm store', 'dr', 'drvol', '-c', 'x'], "MASTERVOL 'vm store' is not a gluster volume name"),
    (['vmstore', 'dr', 'dr/vol', '-c', 'x'], "SLAVEVOL 'dr/vol' is not a gluster volume name"),
    (['vmstore', 'a b', 'drvol', '-c', 'x'], "SLAVE 'a b' is not HOST"),
    (['vmstore', 'dr', 'drvol', '-c', 'x', '-i', '0'], '--interval must be at least 1'),
    (['vmstore', 'dr', 'drvol', '-c', 'x', '-t', '-1'], '--timeout must be 0 (wait for ever)'),
    (['vmstore', 'dr', 'drvol', '-c', 'x', '--vm', 'a', '--exclude', 'a'],
     'VM named both in --vm and --exclude: a'),
    (['vmstore', 'dr', 'drvol', '-c', 'x', '--vm', ' '], '--vm needs the name of a VM'),
    (['vmstore', '-c', 'x', '--check', '--warning', '50'],
     '--warning and --critical are hours, 0 < warning <= critical <= 87600 (not 50 and 49)'),
    (['vmstore', '-c', 'x', '--check', '--restore-point-critical', '0'],
     '--restore-point-warning and --restore-point-critical are hours, 0 < warning <= '
     'critical <= 87600 (not 25 and 0)'),
    (['vmstore', 'dr', 'drvol', '-c', 'x', '--restore-point', 'a'],
     '--restore-point goes with --verify'),
    (['vmstore', 'dr', 'drvol', '-c', 'x', '--verify', '--restore-point', 'a b'],
     "--restore-point 'a b' is not a gluster snapshot name"),
])
def test_a_bad_command_line_is_one_usage_error(argv, line):
    with pytest.raises(vmbackup.UsageError) as raised:
        vmbackup.parse_command_line(argv)
    assert line in str(raised.value)


def test_every_problem_of_the_command_line_is_named_at_once():
    with pytest.raises(vmbackup.UsageError) as raised:
        vmbackup.parse_command_line(['vm store', 'dr', 'drvol', '-c', 'x', '-i', '0',
                                     '--vm', '', '--restore-point', 'a'])
    assert str(raised.value).count('; ') == 3


def test_a_good_command_line_passes():
    args = vmbackup.parse_command_line(['vmstore', 'root@dr', 'drvol', '-c', 'x', '--verify',
                                        '--restore-point', 'vmbackup-drvol-1'])
    assert (args.mastervol, args.slave, args.read_only) == ('vmstore', 'root@dr', False)


# the man page's CONFIGURATION -----------------------------------------------

def manpage():
    spec = importlib.util.spec_from_file_location('manpage', str(ROOT / 'dist' / 'manpage.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_man_page_describes_every_key_under_its_section():
    roff = manpage().config_roff(vmbackup.CONFIG_KEYS)
    text = '\n'.join(roff)
    for section in vmbackup.KNOWN_KEYS:
        keys = [line for line in text.split('.SS [%s]\n' % section)[1]
                .split('.SS')[0].splitlines() if line.startswith('.B ')]
        assert sorted(keys) == sorted('.B ' + key for key in vmbackup.KNOWN_KEYS[section]), section
    timeout = text.split('.B timeout\n')[1].splitlines()[0]
    assert timeout == ('Seconds for one API request. Whole number, more than 0, at most '
                       '604800; default: 300.')
    host = text.split('.B host\n')[1].splitlines()[0]
    assert '\\fBHOST\\fR or \\fBuser@HOST\\fR' in host and 'SLAVE, with its user.' in host
