"""The fake site the tests run the tool on: the names of its volumes and
engine user, a Site (two fake gluster volumes in a temporary directory, the
fake engine, and a runner for the real script), what must hold after every
run, and small helpers that look at what a run left."""
import dataclasses
import fcntl
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

TESTS = pathlib.Path(__file__).resolve().parents[1]
VMBACKUP = TESTS.parent / 'vmbackup.py'
# the interpreter that runs the tool (make test-py36: EL8's Python 3.6 in a
# venv of its own, while the tests and the fake engine run on this one)
PYTHON = os.environ.get('VMBACKUP_PYTHON') or sys.executable
FAKEBIN = TESTS / 'fakebin'
MASTER = 'vmstore'
SLAVE_HOST = 'backup.example.com'
SLAVE = 'root@' + SLAVE_HOST
SLAVEVOL = 'vmstore-dr'
USER = 'admin@internal'
PASSWORD = 'Pa55-w0rd-never-shown'
# our snapshots name their volume; the 2016 tool's did not
BARE_DESCRIPTION = 'GLUSTER-Geo-rep-snapshot'
DESCRIPTION = BARE_DESCRIPTION + ' ' + MASTER

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason='the fake mount client bind-mounts: needs root')


def wait_for(condition, timeout=30, interval=0.05, message='condition'):
    """Poll condition() until it returns a true value; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for %s' % message)
        time.sleep(interval)


def alive(pid):
    """Tell whether process pid exists and is no zombie."""
    try:
        with open('/proc/%d/stat' % pid) as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def without_voltype(meta):
    """Given a .meta file's bytes, its lines but VOLTYPE: a snapshot turns
    its parent's VOLTYPE from LEAF to INTERNAL (and a merge back), the rest
    must not change."""
    return [line for line in meta.splitlines() if not line.startswith(b'VOLTYPE=')]


def ovf_store_paths(engine):
    """Return the relative paths (volume, .meta, .lease) of every OVF store
    volume of the engine's domains: the engine writes them during a run
    (update_ovf_store), so they are checked on their own."""
    paths = set()
    for sd_id in engine.storage_domain_ids():
        for disk_id, volume_id in engine.ovf_stores(sd_id):
            for suffix in ('', '.meta', '.lease'):
                paths.add(os.path.join(sd_id, 'images', disk_id, volume_id + suffix))
    return paths


def our_snapshots(engine):
    """Return {vm name: [snapshot ids]} of the backup snapshots, of any
    volume's (or of the 2016 tool's: its description names none)."""
    left = {}
    for name in engine.vm_names():
        ids = [s['id'] for s in engine.vm(name)['snapshots']
               if s['description'] == BARE_DESCRIPTION
               or s['description'].startswith(BARE_DESCRIPTION + ' ')]
        if ids:
            left[name] = ids
    return left


def mounts_under(path):
    """Return the mount points below path, from /proc/self/mountinfo."""
    path = os.path.realpath(str(path))
    found = []
    with open('/proc/self/mountinfo') as info:
        for line in info:
            point = line.split()[4].replace('\\040', ' ')
            if point == path or point.startswith(path + os.sep):
                found.append(point)
    return found


def tree(directory):
    """Return {relative path: bytes} of every file below directory."""
    directory = pathlib.Path(directory)
    if not directory.exists():
        return {}
    return {str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(directory.rglob('*')) if path.is_file()}


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def output(self):
        return self.out + self.err


class Site:
    """A master and a slave gluster volume (directories), the fake engine
    with the master's storage domain, and a way to run vmbackup.py there."""

    def __init__(self, tmp_path, engine):
        self.tmp = tmp_path
        self.engine = engine
        self.root = tmp_path / 'gluster'
        self.master = self.root / 'volumes' / MASTER
        self.slave = self.root / 'volumes' / SLAVEVOL
        self.master.mkdir(parents=True)
        self.slave.mkdir(parents=True)
        self.scratch = tmp_path / 'scratch'   # the tool's TMPDIR: mount points
        self.scratch.mkdir()
        self.lock_dir = tmp_path / 'lock'
        self.lock_dir.mkdir()
        self.status_dir = tmp_path / 'status'
        self.status_dir.mkdir()
        self.mount_log = tmp_path / 'log' / 'dr_slave.mount.log'
        self.ca_file = engine.ca_pem_path(str(tmp_path))
        self.sd_id = engine.add_storage_domain(
            'vmstore-sd', str(self.master), type='glusterfs',
            address='gluster1.example.com', path='/' + MASTER)
        # a file of the domain that is not a disk image: must survive
        (self.master / self.sd_id / 'dom_md').mkdir(parents=True)
        (self.master / self.sd_id / 'dom_md' / 'metadata').write_text(
            'SDUUID=%s\n' % self.sd_id)
        self.nfs_dir = tmp_path / 'nfs'
        self.nfs_dir.mkdir()
        self.nfs_id = engine.add_storage_domain(
            'nfs-data', str(self.nfs_dir), type='nfs',
            address='nfs.example.com', path='/exports/data')

    # the fakes -----------------------------------------------------------------
    def behave(self, **programs):
        (self.root / 'behaviour.json').write_text(json.dumps(programs))

    def mounts(self, volume=SLAVEVOL):
        """The glusterfs calls that mounted this volume."""
        return [call for call in self.calls('glusterfs')
                if call['argv'][call['argv'].index('--volfile-id') + 1] == volume]

    def calls(self, program=None):
        path = self.root / 'calls.jsonl'
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        return [e for e in entries if program is None or e['program'] == program]

    def calls_but_preflight(self):
        """The calls of the fakes but gluster's CLI: the preflight's
        read-only look at the geo-replication session (gluster ... status
        --xml) and the status detail and volume info read while the
        scheduler runs."""
        return [call for call in self.calls() if call['program'] != 'gluster']

    # the config ----------------------------------------------------------------
    def config(self, text=None, mode=0o600, name='backup.cfg', **sections):
        """Write a config file: the default one updated by sections
        ({'snapshot': {'wait_timeout': '1'}}; a value None drops the key),
        or text as it is."""
        if text is None:
            values = {
                'connection': {'server': self.engine.url, 'user_name': USER,
                               'password': PASSWORD, 'ca_file': self.ca_file,
                               'timeout': '10'},
                'snapshot': {'wait_timeout': '0.25', 'poll_interval': '0.1'},
                'gluster': {'schedule_georep': '%s %s' % (
                    sys.executable, FAKEBIN / 'schedule_georep'),
                    'glusterfs': str(FAKEBIN / 'glusterfs'),
                    'gluster': str(FAKEBIN / 'gluster'),
                    'mount_log': str(self.mount_log)},
                'lock': {'lock_dir': str(self.lock_dir), 'skip_within': '0'},
                'status': {'dir': str(self.status_dir)},
            }
            for section, keys in sections.items():
                values.setdefault(section, {}).update(keys)
            text = ''
            for section, keys in values.items():
                text += '[%s]\n' % section
                text += ''.join('%s = %s\n' % (k, v) for k, v in keys.items()
                                if v is not None)
        path = self.tmp / name
        path.write_text(textwrap.dedent(text))
        path.chmod(mode)
        return str(path)

    # running the tool --------------------------------------------------------------
    def command(self, *args, config=None):
        config = config or self.config()
        positional = [MASTER, SLAVE, SLAVEVOL]
        if args and args[0] == '--':
            positional, args = [], args[1:]
        return [PYTHON, str(VMBACKUP), *positional, '-c', config,
                '-i', '1', *args]

    def env(self):
        env = dict(os.environ)
        env['FAKE_GLUSTER_ROOT'] = str(self.root)
        env['PATH'] = '%s%s%s' % (FAKEBIN, os.pathsep, env.get('PATH', ''))
        env['TMPDIR'] = str(self.scratch)
        return env

    def run(self, *args, config=None, timeout=120):
        process = subprocess.run(self.command(*args, config=config),
                                 env=self.env(), capture_output=True,
                                 text=True, timeout=timeout)
        return Result(process.returncode, process.stdout, process.stderr)

    def start(self, *args, config=None):
        return subprocess.Popen(self.command(*args, config=config),
                                env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    # what is there ------------------------------------------------------------------
    def add_vm(self, name, disks=1, status='up', sd=None, **disk_options):
        sd = sd or self.sd_id
        return self.engine.add_vm(
            name, status=status,
            disks=[dict(sd=sd, **disk_options) for _ in range(disks)])

    def our_snapshots(self):
        return our_snapshots(self.engine)

    def hold_lock(self):
        handle = open(self.lock_dir / ('vmbackup-%s.lock' % MASTER), 'a+')
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return handle


def assert_invariants(site, result):
    """What must hold after every run, whatever happened."""
    assert 'Traceback' not in result.output, result.output
    assert PASSWORD not in result.output
    assert not mounts_under(site.tmp), mounts_under(site.tmp)
    assert site.our_snapshots() == {}, site.our_snapshots()
    for call in site.calls():
        assert PASSWORD not in ' '.join(call['argv'])
    assert list(site.scratch.iterdir()) == []
