"""A real GlusterFS geo-replication lab on this one machine, for tests.

    from support.georep import GeoRepLab, skip_reason

    if skip_reason() is None:
        with GeoRepLab('/tmp/lab') as lab:
            lab.write_master('sd/images/disk/vol', b'data')
            proc = lab.run_scheduler(interval=5, timeout=5)
            assert proc.returncode == 0
            assert lab.read_slave('sd/images/disk/vol') == b'data'

A pytest fixture on top of it (put it in the test module itself: a
conftest.py in tests/gluster/ would break the suite, tests/gluster/NOTES.md
item 10):

    from support import georep

    @pytest.fixture(scope='module')
    def lab(tmp_path_factory):
        reason = georep.skip_reason()
        if reason:
            pytest.skip(reason)
        with georep.GeoRepLab(tmp_path_factory.mktemp('lab')) as lab:
            yield lab

What it does (tests/gluster/NOTES.md says why each step is there):
glusterd started by hand (`glusterd -N`, its own session), a master and a
slave volume of one brick each under the work directory, passwordless root
ssh to HOST over loopback through an sshd started by hand, a geo-replication
session MASTER -> HOST::SLAVE created with push-pem and configured with
`secondary-access-mount true` and `change-detector xsync`, and a FUSE mount of
the master. Everything it starts is stopped by PID on the way out, and what
it added to the machine (/etc/hosts line, ssh keys and authorized_keys lines,
bricks, gluster session files) is removed, so the next run starts clean.

Standard library only: it runs under any python3, inside or outside a venv.
Every process it starts gets CLEAN_PATH (gsyncd runs `python3` from PATH, and
a venv's python3 there breaks it).
"""
import base64
import contextlib
import json
import glob
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET

CLEAN_PATH = '/usr/sbin:/usr/bin:/sbin:/bin'
PACKAGES = ('glusterfs-server', 'glusterfs-client', 'openssh-server', 'rsync')
# binary -> package that ships it (all looked up on CLEAN_PATH)
BINARIES = {'glusterd': 'glusterfs-server', 'gluster': 'glusterfs-server',
            'glusterfs': 'glusterfs-client', 'sshd': 'openssh-server',
            'ssh': 'openssh-client', 'ssh-keygen': 'openssh-client',
            'rsync': 'rsync'}
SCHEDULER_CANDIDATES = (
    '/usr/libexec/glusterfs/scripts/schedule_georep.py',
    '/usr/share/glusterfs/scripts/schedule_georep.py',
    '/usr/lib/*/glusterfs/scripts/schedule_georep.py',
)
GLUSTERD_WORKDIR = pathlib.Path('/var/lib/glusterd')
# run-time directories glusterd and gsyncd fill (sockets, pid files): what
# the lab adds there is removed after glusterd has stopped
RUNTIME_DIRS = (pathlib.Path('/run/gluster'),
                pathlib.Path('/var/lib/misc/gluster'))
HOSTS_FILE = pathlib.Path('/etc/hosts')
HOSTS_MARK = '# added by vmbackup tests/support/georep.py'
# what a lab changed on the machine, kept while it runs, so that the next lab
# undoes it after a lab that was killed before its tear-down
STATE_FILE = pathlib.Path('/var/tmp/georep-lab.state.json')
# an abstract unix socket bound by the lab that runs: a second lab must not
# take the first's state file for a killed run's and tear the live lab
# down (the kernel frees the name when the process ends; no file is left)
LOCK_NAME = '\0georep-lab.lock'
# seconds a lab waits for another one to end (a whole lab takes 3-5 minutes)
LOCK_WAIT = 900
SSH_DIR = pathlib.Path('/root/.ssh')
# env variable that turns the real-gluster tests off on a machine that could
# run them (e.g. a developer's laptop)
SKIP_ENV = 'VMBACKUP_SKIP_GLUSTER'
# set (to the work dir) in the environment of everything the lab starts, so
# that what a lab killed before its tear-down left running can be found
MARK_ENV = 'GEOREP_LAB'
BRICK_INTERNAL = ('.glusterfs', '.trashcan', '.shard')
# the lab's volumes are named so (GeoRepLab's defaults); volumes of other
# names in /var/lib/glusterd mean a real gluster node
LAB_VOLUME_PREFIX = 'georeplab-'
# package -> the service its installation enables: the lab starts its own
# daemons by hand, so it disables what it made apt-get enable
SERVICES = {'glusterfs-server': 'glusterd', 'openssh-server': 'ssh'}
POLICY_RC_D = pathlib.Path('/usr/sbin/policy-rc.d')
APT_LOCK_WAIT = ('-o', 'DPkg::Lock::Timeout=600')


class GeoRepError(RuntimeError):
    """The lab could not be set up, or a command it ran failed."""


def clean_env(extra=None):
    """os.environ with PATH=CLEAN_PATH and no venv/pyenv/python settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('PYTHON', 'PYENV', 'VIRTUAL_ENV', 'CONDA'))}
    env['PATH'] = CLEAN_PATH
    env.setdefault('HOME', '/root')
    env.setdefault('LANG', 'C.UTF-8')
    if extra:
        env.update(extra)
    return env


def which(name):
    """Path of name on CLEAN_PATH, or None."""
    return shutil.which(name, path=CLEAN_PATH)


def find_scheduler():
    """Path of the packaged schedule_georep.py, or None (same search order as
    vmbackup.py's default)."""
    for pattern in SCHEDULER_CANDIDATES:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path):
                return path
    return None


def missing_binaries():
    return sorted(name for name in BINARIES if not which(name))


def skip_reason():
    """None when this machine can run the real-gluster lab, else why not."""
    if os.environ.get(SKIP_ENV, '').strip() not in ('', '0', 'no'):
        return '%s is set' % SKIP_ENV
    if not sys.platform.startswith('linux'):
        return 'real GlusterFS needs Linux'
    if os.geteuid() != 0:
        return 'real GlusterFS geo-replication needs root'
    if not os.path.exists('/dev/fuse'):
        return 'no /dev/fuse: the FUSE mounts cannot work'
    try:
        os.close(os.open('/dev/fuse', os.O_RDWR))
    except OSError as exc:
        return '/dev/fuse cannot be opened: %s' % exc
    node = gluster_node_reason()
    if node:
        return node
    if missing_binaries() or not find_scheduler():
        if not which('apt-get'):
            return ('glusterfs packages missing (%s) and no apt-get to '
                    'install them' % ', '.join(missing_binaries()
                                               or ['schedule_georep.py']))
    return None


def gluster_node_reason(processes=None, marked=None, workdir=None):
    """None when no gluster of this machine's own is in the way, else why
    the lab must not run here: a glusterd that no lab started (a real
    gluster node, or one started by hand), or a glusterd work directory that
    knows peers or volumes other than a lab's (a node whose glusterd is
    only stopped: the lab's glusterd would start with its pool).
    processes ({pid: (ppid, state, cmdline)}), marked (pid -> the lab mark
    in its environment or None) and workdir (/var/lib/glusterd) are there
    for the tests."""
    processes = _proc_table() if processes is None else processes
    marked = marked or _lab_mark
    workdir = pathlib.Path(workdir or GLUSTERD_WORKDIR)
    for pid, (_, state, cmd) in sorted(processes.items()):
        if state != 'Z' and os.path.basename(cmd.split(' ')[0]) == 'glusterd' \
                and not marked(pid):
            return ('this is a gluster node: glusterd runs (pid %d) and no '
                    'test lab started it; the real-gluster tests would take '
                    'glusterd over, so they are skipped' % pid)
    peers = workdir / 'peers'
    if peers.is_dir() and os.listdir(str(peers)):
        return ('this is a gluster node: %s lists peers; the real-gluster '
                'tests would start its glusterd, so they are skipped' % peers)
    volumes = workdir / 'vols'
    theirs = sorted(name for name in (os.listdir(str(volumes))
                                      if volumes.is_dir() else [])
                    if not name.startswith(LAB_VOLUME_PREFIX))
    if theirs:
        return ('this is a gluster node: glusterd knows the volumes %s; the '
                'real-gluster tests would start its glusterd, so they are '
                'skipped' % ', '.join(theirs))
    return None


def _log_default(message):
    print('[georep-lab %s] %s' % (time.strftime('%H:%M:%S'), message),
          file=sys.stderr, flush=True)


def _run(cmd, env=None, timeout=180, check=True, input=None, log=None):
    """Run cmd (a list), capture text output; GeoRepError on failure."""
    if log:
        log('$ ' + ' '.join(shlex.quote(str(c)) for c in cmd))
    try:
        proc = subprocess.run([str(c) for c in cmd], env=env or clean_env(),
                              stdin=subprocess.DEVNULL if input is None
                              else None, input=input,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise GeoRepError('%s: no answer after %s s' % (' '.join(
            str(c) for c in cmd), timeout)) from exc
    if check and proc.returncode != 0:
        raise GeoRepError('%s: exit %s: %s' % (
            ' '.join(str(c) for c in cmd), proc.returncode,
            (proc.stderr.strip() or proc.stdout.strip())[-2000:]))
    return proc


def ensure_packages(log=_log_default, timeout=900):
    """apt-get install the packages the lab needs where any is missing,
    with no service started by the installation, and disable the services
    the installation enabled (glusterd, ssh): the lab starts its own by
    hand, and nothing it installed listens after it, nor after a reboot.
    The packages stay installed. Returns the list of packages installed."""
    missing = []
    for package in PACKAGES:
        proc = _run(['dpkg-query', '-W', '-f=${Status}', package],
                    check=False)
        if proc.returncode != 0 or 'install ok installed' not in proc.stdout:
            missing.append(package)
    if not missing and not missing_binaries() and find_scheduler():
        return []
    if not which('apt-get'):
        raise GeoRepError('packages missing (%s) and no apt-get'
                          % ', '.join(missing))
    env = clean_env({'DEBIAN_FRONTEND': 'noninteractive'})
    _run(['apt-get', 'update', '-q'] + list(APT_LOCK_WAIT), env=env,
         timeout=timeout)
    # no recommends: glusterfs-server's would bring nfs-common and rpcbind,
    # two more services, which the lab does not need
    command = ['apt-get', 'install', '-y', '-q', '--no-install-recommends'
               ] + list(APT_LOCK_WAIT) + [
        '-o', 'Dpkg::Options::=--force-confdef',
        '-o', 'Dpkg::Options::=--force-confold'] + (missing or list(PACKAGES))
    new, upgraded = apt_plan(command, env)
    log('apt-get installs %s' % ' '.join(new or ['nothing new']))
    if upgraded:
        # e.g. openssh-server exists only at the archive's version, and it
        # needs openssh-client of the same version
        log('apt-get also upgrades, because the packages above need it: %s'
            % ', '.join(upgraded))
    with services_not_started(log):
        _run(command, env=env, timeout=timeout)
    for package in missing:
        if package in SERVICES:
            disable_service(SERVICES[package], log)
    if missing_binaries() or not find_scheduler():
        raise GeoRepError('still missing after apt-get install: %s' % (
            ', '.join(missing_binaries()) or 'schedule_georep.py'))
    return missing


def apt_plan(command, env):
    """Given an apt-get install command, return ([packages it would
    install], ['package old -> new' it would upgrade]), from a simulation."""
    proc = _run(command[:2] + ['-s'] + command[2:], env=env, check=False)
    return parse_apt_simulation(proc.stdout)


def parse_apt_simulation(text):
    """Given the output of `apt-get -s install ...`, return ([packages new
    to the machine], ['package old -> new' of those upgraded])."""
    new, upgraded = [], []
    for line in text.splitlines():
        # Inst openssh-client [1:9.2p1-2+deb12u6] (1:9.2p1-2+deb12u10 ...)
        # Inst openssh-server (1:9.2p1-2+deb12u10 Debian:12.12/stable [amd64])
        words = line.split()
        if len(words) < 3 or words[0] != 'Inst':
            continue
        if words[2].startswith('[') and len(words) > 3:
            upgraded.append('%s %s -> %s' % (words[1], words[2].strip('[]'),
                                             words[3].lstrip('(')))
        else:
            new.append(words[1])
    return new, upgraded


@contextlib.contextmanager
def services_not_started(log):
    """While apt-get installs: a policy-rc.d that refuses every service
    start (invoke-rc.d's interface), unless the machine already has one."""
    if POLICY_RC_D.exists():
        yield
        return
    POLICY_RC_D.write_text('#!/bin/sh\n# vmbackup tests/support/georep.py, '
                           'while it runs apt-get: start no service\n'
                           'exit 101\n')
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink()


def disable_service(name, log):
    """Disable (and stop, where systemd runs) the service name that a
    package installation enabled."""
    log('disabling the %s service that its package enabled' % name)
    if os.path.isdir('/run/systemd/system') and which('systemctl'):
        _run(['systemctl', 'stop', name + '.service'], check=False)
    if which('deb-systemd-helper'):
        _run(['deb-systemd-helper', 'disable', name + '.service'],
             check=False)
    if which('update-rc.d') and os.path.exists('/etc/init.d/' + name):
        _run(['update-rc.d', name, 'disable'], check=False)


def wait_until(condition, timeout, what, interval=0.5):
    """Call condition() until it returns something true; return that.
    GeoRepError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise GeoRepError('timed out after %s s waiting for %s'
                              % (timeout, what))
        time.sleep(interval)


def _proc_table():
    """{pid: (ppid, state, cmdline)} of every process."""
    table = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                stat = f.read()
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(
                    'utf-8', 'replace').strip()
        except OSError:
            continue
        fields = stat[stat.rfind(')') + 2:].split()
        table[int(entry)] = (int(fields[1]), fields[0], cmdline)
    return table


def _alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(')') + 2:].split()[0] not in ('Z', 'X')


def _lab_mark(pid):
    """Value of MARK_ENV in the environment of process pid, or None."""
    try:
        with open('/proc/%d/environ' % pid, 'rb') as f:
            environ = f.read().split(b'\0')
    except OSError:
        return None
    prefix = MARK_ENV.encode() + b'='
    for item in environ:
        if item.startswith(prefix):
            return item[len(prefix):].decode('utf-8', 'replace')
    return None


def _ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open('/proc/%d/stat' % pid) as f:
                stat = f.read()
        except OSError:
            break
        pid = int(stat[stat.rfind(')') + 2:].split()[1])
    return pids


def _stop_pid(pid, timeout=10, popen=None):
    """SIGTERM pid, wait up to timeout, then SIGKILL. Reaps popen if given."""
    if popen is not None and popen.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if popen is not None and popen.poll() is not None:
                return
            if popen is None and not _alive(pid):
                return
            time.sleep(0.1)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(5)


def is_mount(path):
    path = os.path.realpath(str(path))
    with open('/proc/self/mountinfo') as info:
        for line in info:
            point = line.split()[4].replace('\\040', ' ')
            if point == path:
                return True
    return False


def tree(directory, skip=()):
    """{relative path: bytes} of every regular file below directory, leaving
    out the top-level names in skip."""
    directory = pathlib.Path(directory)
    found = {}
    if not directory.is_dir():
        return found
    for root, dirs, files in os.walk(directory):
        if pathlib.Path(root) == directory:
            dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            path = pathlib.Path(root, name)
            if path.is_file() and not path.is_symlink():
                found[str(path.relative_to(directory))] = path.read_bytes()
    return dict(sorted(found.items()))


def _is_loopback(address):
    return address.startswith('127.')


def _resolve(host):
    try:
        return sorted({ai[4][0] for ai in socket.getaddrinfo(
            host, None, socket.AF_INET)})
    except socket.gaierror:
        return []


class GeoRepLab:
    """Real geo-replication MASTER -> HOST::SLAVE on this one machine.

    Use as a context manager (or call setup() and teardown()). After set-up:

    - master, slave: volume names; host: the slave host (this machine's host
      name, resolving to a loopback address); slave_url: 'HOST::SLAVE'
    - master_mount: pathlib.Path of a FUSE mount of the master, to write into
    - master_brick, slave_brick: pathlib.Path of the bricks
    - scheduler: path of the packaged schedule_georep.py
    - env: the clean environment (PATH=CLEAN_PATH) to run the tool and the
      scheduler with
    - timings: [(phase, seconds)] of set-up and tear-down

    One lab per machine at a time: it owns glusterd, sshd on 127.0.0.1:22
    (or uses one already listening there) and the volume names.
    """

    def __init__(self, workdir=None, master='georeplab-master',
                 slave='georeplab-slave', host=None, install=True,
                 log=_log_default, keep_workdir=None, shard_block_size=None,
                 change_detector='xsync', rollover_time=None):
        self._own_workdir = workdir is None
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix='georep-lab-')
        self.workdir = pathlib.Path(workdir).resolve()
        # a work dir we made is removed on the way out; of one given, only
        # the bricks and mount points go (its log/ stays)
        self.keep_workdir = (not self._own_workdir if keep_workdir is None
                             else keep_workdir)
        self.master = master
        self.slave = slave
        self.host = host
        # features.shard on both volumes (oVirt's group virt) with this
        # block size (e.g. '4MB'); None: no sharding
        self.shard_block_size = shard_block_size
        # 'xsync' (every scheduler run completes here) or 'changelog'
        # (production's; see make_live() and gluster-notes.md)
        self.change_detector = change_detector
        # changelog.rollover-time of the master (seconds), None: gluster's 15
        self.rollover_time = rollover_time
        self.install = install
        self.log = log or (lambda message: None)
        self.env = clean_env({MARK_ENV: str(self.workdir)})
        self.timings = []
        self.scheduler = None
        self.brick_dir = self.workdir / 'bricks'
        self.master_brick = self.brick_dir / master
        self.slave_brick = self.brick_dir / slave
        self.log_dir = self.workdir / 'log'
        self.mnt_dir = self.workdir / 'mnt'
        self.master_mount = self.mnt_dir / 'master'
        self._glusterd = None
        self._sshd = None
        self._mounts = []          # mount points of ours, in order
        self._session_created = False
        self._volumes_created = []
        self._broken = None
        self._hang_pidfile = self.workdir / 'hang-rsync.pids'
        self._stale = None         # state of a lab killed before tear-down
        self._lock = None          # the socket bound to LOCK_NAME, while we run
        # what the machine was like before (saved in STATE_FILE)
        self._state = {'workdir': str(self.workdir),
                       'own_workdir': self._own_workdir,
                       'volumes': [master, slave],
                       'hosts_line': None,
                       'runtime_before': None,
                       'ssh_dir_made': False,
                       'ssh_before': None,
                       'run_sshd_made': False,
                       'georep_files_before': None}

    # ----------------------------------------------------------- plumbing
    @property
    def slave_url(self):
        return '%s::%s' % (self.host, self.slave)

    @contextlib.contextmanager
    def _phase(self, name):
        start = time.monotonic()
        self.log('%s ...' % name)
        try:
            yield
        finally:
            took = time.monotonic() - start
            self.timings.append((name, took))
            self.log('%s: %.1f s' % (name, took))

    def run(self, cmd, check=True, timeout=180, verbose=False):
        """Run cmd (a list) with the clean environment; CompletedProcess
        with text stdout/stderr; GeoRepError on a non-zero exit if check."""
        return _run(cmd, env=self.env, timeout=timeout, check=check,
                    log=self.log if verbose else None)

    def gluster(self, *args, check=True, timeout=180):
        """`gluster --mode=script ARGS`."""
        return self.run(['gluster', '--mode=script'] + list(args),
                        check=check, timeout=timeout)

    def georep(self, *args, check=True, timeout=180, master=None,
               slave_url=None):
        """`gluster volume geo-replication MASTER HOST::SLAVE ARGS`."""
        return self.gluster('volume', 'geo-replication',
                            master or self.master, slave_url or self.slave_url,
                            *args, check=check, timeout=timeout)

    def _save_state(self):
        tmp = STATE_FILE.with_suffix('.tmp')
        tmp.write_text(json.dumps(self._state, indent=1))
        os.replace(tmp, STATE_FILE)

    # ------------------------------------------------------------- set-up
    def __enter__(self):
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        errors = self.teardown()
        if errors and exc_type is None:
            raise GeoRepError('tear-down: ' + '; '.join(errors))
        return False

    def setup(self):
        start = time.monotonic()
        reason = skip_reason()
        if reason:
            raise GeoRepError('this machine cannot run the lab: ' + reason)
        self._take_lock()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._phase('packages'):
            if self.install:
                ensure_packages(self.log)
            elif missing_binaries():
                raise GeoRepError('missing: ' + ', '.join(missing_binaries()))
            self.scheduler = find_scheduler()
            if not self.scheduler:
                raise GeoRepError('schedule_georep.py not found')
        with self._phase('leftovers'):
            self._adopt_stale_state()
            self._recover_leftovers()
        with self._phase('host name'):
            self._setup_host()
        with self._phase('glusterd'):
            self._start_glusterd()
        with self._phase('volumes'):
            self._purge_stale()
            self._create_volumes()
        with self._phase('ssh'):
            self._setup_ssh()
        with self._phase('geo-replication session'):
            self._create_session()
        with self._phase('master mount'):
            self._mount(self.master, self.master_mount,
                        self.log_dir / 'master-mount.log')
        took = time.monotonic() - start
        self.timings.append(('set-up total', took))
        self.log('set-up total: %.1f s' % took)
        return self

    def _take_lock(self):
        """Bind LOCK_NAME; while another lab holds it (another checkout's
        make test on this machine), wait for it, up to LOCK_WAIT seconds."""
        deadline = time.monotonic() + LOCK_WAIT
        said = False
        while True:
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                lock.bind(LOCK_NAME)
            except OSError:
                lock.close()
            else:
                self._lock = lock
                return
            if time.monotonic() >= deadline:
                raise GeoRepError(
                    'another lab has run on this machine for over %d s (it '
                    'holds the abstract socket @%s)' % (LOCK_WAIT,
                                                       LOCK_NAME[1:]))
            if not said:
                self.log('another lab runs on this machine: waiting for it '
                         '(up to %d s)' % LOCK_WAIT)
                said = True
            time.sleep(2)

    def _adopt_stale_state(self):
        """Take over what a lab killed before its tear-down recorded, so
        that our tear-down puts the machine back as it was before that one."""
        try:
            stale = json.loads(STATE_FILE.read_text())
        except FileNotFoundError:
            stale = None
        except ValueError as exc:
            self.log('ignoring unreadable %s: %s' % (STATE_FILE, exc))
            stale = None
        if stale and stale.get('workdir') != str(self.workdir):
            self._stale = stale
            self.log('an earlier lab (%s) was not torn down: taking over '
                     'its clean-up' % stale.get('workdir'))
            for key in ('hosts_line', 'runtime_before', 'ssh_before',
                        'georep_files_before'):
                if stale.get(key) is not None:
                    self._state[key] = stale[key]
            for key in ('ssh_dir_made', 'run_sshd_made'):
                self._state[key] = bool(stale.get(key))
        self._save_state()

    def _lab_process(self, pid, cmd, names):
        """True when process pid (cmdline cmd) was started, directly or not,
        by a lab: MARK_ENV in its environment, a lab's sshd, or a gluster
        process naming one of the lab volumes."""
        if _lab_mark(pid):
            return True
        if 'sshd' in cmd and 'georep-lab-sshd.pid' in cmd:
            return True
        words = cmd.split()
        program = os.path.basename(words[0]) if words else ''
        gluster_like = program in ('glusterfs', 'glusterfsd', 'ssh', 'rsync') \
            or 'gsyncd' in cmd
        return gluster_like and any(name in cmd for name in names)

    def _recover_leftovers(self):
        """End what an earlier lab left running (it was killed before its
        tear-down): unmount its FUSE mounts, stop its processes by PID."""
        names = set(self._state['volumes'])
        if self._stale:
            names.update(self._stale.get('volumes') or [])
        mine = _ancestors()
        table = _proc_table()
        left = {pid for pid, (_, state, cmd) in table.items()
                if state != 'Z' and pid not in mine
                and self._lab_process(pid, cmd, names)}
        # and their descendants (an sshd's sessions, gsyncd's ssh)
        grew = True
        while grew:
            more = {pid for pid, (ppid, state, _) in table.items()
                    if ppid in left and pid not in left and state != 'Z'
                    and pid not in mine}
            left |= more
            grew = bool(more)
        if not left:
            return
        self.log('an earlier lab left %d process(es) running: ending them'
                 % len(left))
        for pid in sorted(left):
            words = table[pid][2].split()
            if words and os.path.basename(words[0]) == 'glusterfs' \
                    and is_mount(words[-1]):
                self.log('lazy unmount of %s' % words[-1])
                self.run(['umount', '-l', words[-1]], check=False)
        for pid in sorted(left):
            self.log('ending %d: %s' % (pid, table[pid][2][:160]))
            _stop_pid(pid, timeout=5)

    def _setup_host(self):
        host = self.host or socket.gethostname()
        if not host or host.split('.')[0] in ('localhost', 'localhost6'):
            # gluster refuses "localhost" as a brick or slave host
            host = 'georep-lab'
        line = self._state['hosts_line']
        if line and line not in HOSTS_FILE.read_text():
            self._state['hosts_line'] = line = None
            self._save_state()
        addresses = _resolve(host)
        if addresses and all(map(_is_loopback, addresses)):
            self.host = host
            self.log('host %s resolves to %s' % (host, ', '.join(addresses)))
            return
        line = '127.0.0.1\t%s\t%s\n' % (host, HOSTS_MARK)
        text = HOSTS_FILE.read_text()
        if addresses:
            # it resolves to another address: ours first, so that it wins
            new = line + text
        else:
            new = text + ('' if text.endswith('\n') or not text else '\n') \
                + line
        self._state['hosts_line'] = line
        self._save_state()
        HOSTS_FILE.write_text(new)
        self.log('added to /etc/hosts: %s' % line.strip())
        addresses = _resolve(host)
        if not addresses or not _is_loopback(addresses[0]):
            raise GeoRepError('%s still resolves to %s after editing '
                              '/etc/hosts' % (host, addresses))
        self.host = host

    def _start_glusterd(self):
        for pid, (_, state, cmd) in _proc_table().items():
            if state != 'Z' and os.path.basename(cmd.split(' ')[0]) \
                    == 'glusterd':
                raise GeoRepError(
                    'glusterd already runs (pid %d: %s), not started by a '
                    'lab: stop it first, the lab must start its own'
                    % (pid, cmd))
        if self._state['runtime_before'] is None:
            self._state['runtime_before'] = {
                str(path): sorted(os.listdir(path)) if path.is_dir() else None
                for path in RUNTIME_DIRS}
            self._save_state()
        out = open(self.log_dir / 'glusterd.out', 'ab')
        self._glusterd = subprocess.Popen(
            [which('glusterd'), '-N'], env=self.env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.log('glusterd pid %d' % self._glusterd.pid)

        def answers():
            if self._glusterd.poll() is not None:
                raise GeoRepError('glusterd exited with %s, see %s' % (
                    self._glusterd.returncode, self.log_dir / 'glusterd.out'))
            return self.gluster('pool', 'list', check=False,
                                timeout=30).returncode == 0
        wait_until(answers, 60, 'glusterd to answer pool list')

    def _volume_names(self):
        proc = self.gluster('volume', 'list', check=False)
        return set(proc.stdout.split()) if proc.returncode == 0 else set()

    def _sessions(self):
        """{(master, slave volume)} of every geo-replication session."""
        proc = self.gluster('volume', 'geo-replication', 'status', '--xml',
                            check=False)
        found = set()
        try:
            root = ET.fromstring(proc.stdout)
        except ET.ParseError:
            return found
        for volume in root.iter('volume'):
            name = volume.findtext('name')
            for session in volume.iter('session'):
                secondary = session.findtext('session_secondary') or ''
                # e.g. ssh://vm::georeplab-slave:<uuid>
                slave = secondary.split('::', 1)[-1].split(':')[0]
                found.add((name, slave))
        return found

    def _remove_session(self, master, slave_url, timeout=90):
        """stop force + delete reset-sync-time until the session is gone (a
        glusterd that just started may restart a session it finds started,
        and a delete then fails with 'still active')."""
        slave = slave_url.split('::', 1)[1]

        def gone():
            if (master, slave) not in self._sessions():
                return True
            self.georep('stop', 'force', check=False, master=master,
                        slave_url=slave_url)
            proc = self.georep('delete', 'reset-sync-time', check=False,
                               master=master, slave_url=slave_url)
            return proc.returncode == 0
        wait_until(gone, timeout, 'geo-replication session %s -> %s to go'
                   % (master, slave_url), interval=2)

    def _purge_stale(self):
        """Remove sessions and volumes of the lab's names left by a lab
        killed before its tear-down, and that lab's bricks."""
        names = set(self._state['volumes'])
        if self._stale:
            names.update(self._stale.get('volumes') or [])
        for master, slave in sorted(self._sessions()):
            if master in names or slave in names:
                self.log('removing the stale session %s -> %s'
                         % (master, slave))
                self._remove_session(master, '%s::%s' % (self.host, slave))
        present = self._volume_names() & names
        for volume in sorted(present):
            self.log('removing the stale volume %s' % volume)
            self.gluster('volume', 'stop', volume, 'force', check=False)
            self.gluster('volume', 'delete', volume)
        if present:
            self._wait_glusterd_children()
        stale_dir = (self._stale or {}).get('workdir')
        if stale_dir and stale_dir != str(self.workdir):
            subdirs = ([''] if self._stale.get('own_workdir')
                       else ['bricks', 'mnt', 'hang-rsync', 'hang-rsync.pids'])
            for sub in subdirs:
                path = pathlib.Path(stale_dir, sub)
                if not path.exists():
                    continue
                if path.is_dir():
                    if any(is_mount(p) for p in [path] + list(path.glob('*'))
                           + list(path.glob('*/*'))):
                        self.log('%s still has a mount: kept' % path)
                        continue
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
                self.log('removed %s of the earlier lab' % path)

    def _create_volumes(self):
        for volume, brick in ((self.master, self.master_brick),
                              (self.slave, self.slave_brick)):
            if brick.exists():
                shutil.rmtree(brick)
            brick.mkdir(parents=True)
            self.gluster('volume', 'create', volume,
                         '%s:%s' % (self.host, brick), 'force')
            self._volumes_created.append(volume)
            if self.shard_block_size:
                # oVirt's group virt turns sharding on; the slave has the
                # master's (item 8 of issue 20: a DR volume must)
                self.gluster('volume', 'set', volume, 'features.shard', 'on')
                self.gluster('volume', 'set', volume,
                             'features.shard-block-size',
                             self.shard_block_size)
            if volume == self.master and self.rollover_time:
                self.gluster('volume', 'set', volume,
                             'changelog.rollover-time',
                             str(self.rollover_time))
            self.gluster('volume', 'start', volume)
        for volume in (self.master, self.slave):
            wait_until(lambda v=volume: self._bricks_online(v), 60,
                       'brick of %s online' % volume)

    def _bricks_online(self, volume):
        proc = self.gluster('volume', 'status', volume, '--xml', check=False)
        if proc.returncode != 0:
            return False
        try:
            root = ET.fromstring(proc.stdout)
        except ET.ParseError:
            return False
        nodes = [n for n in root.iter('node')
                 if (n.findtext('path') or '').startswith('/')]
        return bool(nodes) and all(n.findtext('status') == '1'
                                   for n in nodes)

    def _setup_ssh(self):
        # remember ~/.ssh as it is, to put it back
        if self._state['ssh_before'] is None:
            if not SSH_DIR.exists():
                SSH_DIR.mkdir(mode=0o700)
                self._state['ssh_dir_made'] = True
            self._state['ssh_before'] = {
                name: base64.b64encode((SSH_DIR / name).read_bytes()).decode()
                for name in os.listdir(SSH_DIR)
                if (SSH_DIR / name).is_file()}
            self._save_state()
        SSH_DIR.mkdir(mode=0o700, exist_ok=True)
        keys = [SSH_DIR / n for n in ('id_ed25519', 'id_ecdsa', 'id_rsa')]
        if not any(k.exists() for k in keys):
            self.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '',
                      '-C', 'georep-lab', '-f', SSH_DIR / 'id_ed25519'])
        key = next(k for k in keys if k.exists())
        pub = pathlib.Path(str(key) + '.pub').read_text().strip()
        authorized = SSH_DIR / 'authorized_keys'
        text = authorized.read_text() if authorized.exists() else ''
        if pub not in text.splitlines():
            with open(authorized, 'a') as f:
                f.write(('\n' if text and not text.endswith('\n') else '')
                        + pub + '\n')
            os.chmod(authorized, 0o600)
        # sshd on loopback, unless one answers there already
        if self._port_open('127.0.0.1', 22):
            self.log('an sshd already listens on 127.0.0.1:22: using it')
        else:
            if not glob.glob('/etc/ssh/ssh_host_*_key'):
                self.run(['ssh-keygen', '-A'])
            if not os.path.isdir('/run/sshd'):
                self._state['run_sshd_made'] = True
                self._save_state()
                os.makedirs('/run/sshd', mode=0o755)
            out = open(self.log_dir / 'sshd.log', 'ab')
            self._sshd = subprocess.Popen(
                [which('sshd'), '-D', '-e',
                 '-o', 'ListenAddress=127.0.0.1', '-o', 'Port=22',
                 # the name tells a later lab whose sshd this is
                 '-o', 'PidFile=%s' % (self.workdir / 'georep-lab-sshd.pid'),
                 '-o', 'PermitRootLogin=prohibit-password',
                 '-o', 'PasswordAuthentication=no',
                 '-o', 'UseDNS=no', '-o', 'MaxStartups=100',
                 '-o', 'MaxSessions=100'],
                env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
            out.close()
            self.log('sshd pid %d' % self._sshd.pid)

            def listening():
                if self._sshd.poll() is not None:
                    raise GeoRepError('sshd exited with %s, see %s' % (
                        self._sshd.returncode, self.log_dir / 'sshd.log'))
                return self._port_open('127.0.0.1', 22)
            wait_until(listening, 30, 'sshd to listen')

        def ssh_works():
            return self.run(['ssh', '-oBatchMode=yes',
                             '-oStrictHostKeyChecking=no',
                             '-oConnectTimeout=5', self.host, 'true'],
                            check=False, timeout=30).returncode == 0
        wait_until(ssh_works, 30, 'passwordless root ssh to %s' % self.host)

    @staticmethod
    def _port_open(host, port):
        with contextlib.suppress(OSError), \
                socket.create_connection((host, port), timeout=2):
            return True
        return False

    def _create_session(self):
        georep_dir = GLUSTERD_WORKDIR / 'geo-replication'
        if self._state['georep_files_before'] is None:
            self._state['georep_files_before'] = sorted(
                os.listdir(georep_dir)) if georep_dir.is_dir() else []
            self._save_state()
        self.gluster('system::', 'execute', 'gsec_create')
        self.georep('create', 'push-pem', 'force')
        self._session_created = True
        # create returns before its post-hook has installed gsyncd's key; the
        # hook's last step sets read-only on the slave: wait for that
        wait_until(lambda: self.volume_option(self.slave,
                                              'features.read-only') == 'on',
                   120, 'push-pem hook to set features.read-only on %s'
                   % self.slave)
        self._wait_glusterd_children()
        self.georep('config', 'secondary-access-mount', 'true')
        if self.change_detector != 'changelog':
            self.georep('config', 'change-detector', self.change_detector)
        self.wait_state('Created', timeout=30)

    def volume_option(self, volume, option):
        """Value of a volume option (`gluster volume get`), or None."""
        proc = self.gluster('volume', 'get', volume, option, check=False)
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == option:
                return parts[1]
        return None

    def _glusterd_children(self):
        if self._glusterd is None or self._glusterd.poll() is not None:
            return []
        return [(pid, cmd) for pid, (ppid, state, cmd)
                in _proc_table().items()
                if ppid == self._glusterd.pid and state != 'Z']

    def _wait_glusterd_children(self, timeout=120):
        """Wait for glusterd's hook scripts (its children) to end."""
        wait_until(lambda: not self._glusterd_children(), timeout,
                   "glusterd's children to end (%s)"
                   % self._glusterd_children())

    # ------------------------------------------------------------- mounts
    def _mount(self, volume, path, log, client_pid=None):
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cmd = [which('glusterfs'), '--volfile-server', self.host,
               '--volfile-id', volume]
        if client_pid is not None:
            cmd.append('--client-pid=%d' % client_pid)
        cmd += ['-l', str(log), str(path)]
        self._mounts.append(path)
        self.run(cmd, timeout=60)
        wait_until(lambda: is_mount(path), 30, 'mount of %s at %s'
                   % (volume, path), interval=0.2)
        # it answers once the client is connected to the brick
        wait_until(lambda: self._stat_ok(path), 30,
                   'mount of %s to answer' % volume, interval=0.2)
        return path

    @staticmethod
    def _stat_ok(path):
        try:
            os.listdir(path)
            return True
        except OSError:
            return False

    def _umount(self, path):
        path = pathlib.Path(path)
        if is_mount(path):
            proc = self.run(['umount', str(path)], check=False, timeout=60)
            if proc.returncode != 0:
                self.log('umount %s: %s; lazy unmount' % (
                    path, proc.stderr.strip()))
                self.run(['umount', '-l', str(path)], check=False,
                         timeout=60)
            wait_until(lambda: not is_mount(path), 30,
                       'unmount of %s' % path, interval=0.2)
        # the glusterfs client process ends a moment after the unmount
        wait_until(lambda: not self._client_pids(path), 30,
                   'glusterfs client of %s to exit' % path, interval=0.2)
        if path in self._mounts:
            self._mounts.remove(path)
        with contextlib.suppress(OSError):
            path.rmdir()

    @staticmethod
    def _client_pids(path):
        return [pid for pid, (_, state, cmd) in _proc_table().items()
                if state != 'Z' and cmd.startswith(('glusterfs ',
                                                    '/usr/sbin/glusterfs '))
                and cmd.endswith(' ' + str(path))]

    @contextlib.contextmanager
    def mount_slave(self, client_pid=-4):
        """Mount the slave in a fresh directory, as vmbackup.py does
        (--client-pid=-4 gets through the slave's read-only and, unlike
        gsyncd's -1, sees sharded files whole), or as an ordinary client
        with client_pid=None. Yields the mount's Path;
        unmounts and removes it on the way out."""
        path = pathlib.Path(tempfile.mkdtemp(prefix='slave-',
                                             dir=self.mnt_dir))
        try:
            self._mount(self.slave, path, self.log_dir / 'slave-mount.log',
                        client_pid=client_pid)
            yield path
        finally:
            self._umount(path)

    # -------------------------------------------------------------- files
    def write_master(self, relpath, data):
        """Write bytes to MASTER/relpath through the FUSE mount (parents
        made, fsync'ed); return its path in the mount."""
        path = self.master_mount / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return path

    def master_tree(self):
        """{relative path: bytes} of every file in the master (its mount)."""
        return tree(self.master_mount)

    def slave_tree(self):
        """{relative path: bytes} of every file at the slave, read from its
        brick (gluster's internal .glusterfs and .trashcan left out)."""
        return tree(self.slave_brick, skip=BRICK_INTERNAL)

    def read_slave(self, relpath):
        """Bytes of SLAVE/relpath read from the slave brick; None if none."""
        try:
            return (self.slave_brick / relpath).read_bytes()
        except FileNotFoundError:
            return None

    def slave_exists(self, relpath):
        return os.path.lexists(self.slave_brick / relpath)

    # -------------------------------------------------------------- status
    def status(self):
        """Per-worker rows of `gluster volume geo-replication MASTER
        HOST::SLAVE status --xml`: a list of dicts of every field (status,
        crawl_status, checkpoint_completed, checkpoint_time, last_synced,
        failures, ...). GeoRepError when gluster cannot say."""
        proc = self.georep('status', '--xml', check=False)
        try:
            root = ET.fromstring(proc.stdout)
        except ET.ParseError as exc:
            raise GeoRepError('status --xml unreadable (%s): %s' % (
                exc, (proc.stdout + proc.stderr)[-500:])) from exc
        if root.findtext('opRet') not in ('0', None):
            raise GeoRepError('status --xml: %s' % root.findtext('opErrstr'))
        return [{child.tag: (child.text or '').strip() for child in pair}
                for pair in root.iter('pair')]

    def session_state(self):
        """The workers' status: 'Created', 'Active', 'Passive', 'Stopped',
        'Faulty', 'Initializing...', 'Paused'; several joined with ','
        when they differ; None when there is no worker row."""
        states = sorted({row.get('status') for row in self.status()})
        return ','.join(states) if states else None

    def wait_state(self, state, timeout=60):
        """Wait until session_state() == state."""
        return wait_until(lambda: self.session_state() == state, timeout,
                          'session state %s' % state, interval=1)

    def crawl_status(self):
        """The workers' crawl_status (`status detail --xml`), joined with
        ',' when they differ: 'Changelog Crawl', 'Hybrid Crawl', ..."""
        proc = self.georep('status', 'detail', '--xml', check=False)
        try:
            root = ET.fromstring(proc.stdout)
        except ET.ParseError:
            return None
        return ','.join(sorted({(p.findtext('crawl_status') or '').strip()
                                for p in root.iter('pair')})) or None

    def make_live(self, attempts=4, wait=35):
        """Start the session in changelog mode and make sure its worker gets
        the brick's change notices (gluster-notes.md, "Changelog mode and
        sharding, measured": about half of the starts here are dead, in
        Changelog Crawl with nothing ever synced): wait for Changelog
        Crawl, write a probe file into the master, wait up to `wait` s for
        it at the slave; if it did not come, stop force and start again.
        Returns the number of starts it took; GeoRepError after attempts.
        Change no config afterwards (every config change restarts the
        worker, which rolls the dice again)."""
        for attempt in range(1, attempts + 1):
            if self.session_state() not in ('Created', 'Stopped'):
                self.georep('stop', 'force', check=False)
            self.georep('start')
            wait_until(lambda: self.crawl_status() == 'Changelog Crawl', 90,
                       'Changelog Crawl', interval=1)
            probe = '.georep-lab-probe-%d-%s' % (attempt, uuid.uuid4().hex)
            self.write_master(probe, b'probe %d\n' % attempt)
            try:
                wait_until(lambda: self.read_slave(probe) is not None, wait,
                           'the probe file at the slave', interval=0.5)
            except GeoRepError:
                self.log('start %d of the session is dead (nothing synced '
                         'in %d s): restarting' % (attempt, wait))
                continue
            self.log('live changelog session after %d start(s)' % attempt)
            return attempt
        raise GeoRepError('no live changelog session in %d starts' % attempts)

    # ----------------------------------------------------------- scheduler
    def scheduler_command(self, interval=5, timeout=5, no_color=True,
                          slave=None):
        """The packaged scheduler's command line, run with python3:
        python3 schedule_georep.py [--no-color] --interval I --timeout T
        MASTER SLAVE(=host) SLAVEVOL"""
        cmd = ['python3', self.scheduler]
        if no_color:
            cmd.append('--no-color')
        cmd += ['--interval', str(interval), '--timeout', str(timeout),
                self.master, slave or self.host, self.slave]
        return cmd

    def run_scheduler(self, interval=5, timeout=5, limit=None, **kwargs):
        """Run schedule_georep.py with lab.env, wait at most limit seconds
        (default: its own 60 s warm-up + its timeout + 3 minutes). Returns
        the CompletedProcess (its output is all on stderr) with .elapsed
        in seconds; GeoRepError if it outlives limit (it is killed)."""
        if limit is None:
            limit = 60 + (timeout or 30) * 60 + interval + 180
        cmd = self.scheduler_command(interval, timeout, **kwargs)
        self.log('$ ' + ' '.join(cmd))
        start = time.monotonic()
        proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise GeoRepError('%s still running after %s s: killed'
                              % (' '.join(cmd), limit))
        result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        result.elapsed = time.monotonic() - start
        self.log('scheduler exit %s after %.1f s' % (proc.returncode,
                                                     result.elapsed))
        return result

    # ---------------------------------------------------- failure injection
    def break_replication(self, pending='.georep-lab-pending'):
        """Make geo-replication unable to complete until
        repair_replication(): the session's rsync-command becomes a script
        that hangs, so a started worker turns Active and stays so, but its
        data sync never ends and no checkpoint completes (the scheduler
        waits for its --timeout, then stops the session and exits 1).
        Writes a file into the master at `pending` (None: don't) so that
        there is data to sync: with xsync, a checkpoint with nothing to
        sync needs no rsync and would complete."""
        hang = self.workdir / 'hang-rsync'
        hang.write_text(
            '#!/bin/sh\n'
            '# georep-lab: an rsync that never finishes\n'
            'echo $$ >> %s\n'
            'exec sleep 3600\n' % shlex.quote(str(self._hang_pidfile)))
        hang.chmod(0o755)
        self.georep('config', 'rsync-command', str(hang))
        self._broken = 'rsync-hang'
        if pending:
            self.write_master(pending, os.urandom(4096))

    def repair_replication(self):
        """Undo break_replication(): the default rsync-command again, hung
        ones ended. Does nothing when not broken."""
        if not self._broken:
            return
        self.georep('config', '!rsync-command', check=False)
        value = self.georep('config', 'rsync-command', check=False)
        if value.stdout.strip() not in ('rsync', ''):
            self.georep('config', 'rsync-command', 'rsync')
        self._kill_hung()
        self._broken = None

    def _kill_hung(self):
        if not self._hang_pidfile.exists():
            return
        for word in self._hang_pidfile.read_text().split():
            pid = int(word)
            table = _proc_table()
            if pid in table and 'sleep 3600' in table[pid][2]:
                _stop_pid(pid, timeout=2)
        self._hang_pidfile.unlink()

    @contextlib.contextmanager
    def broken_replication(self, **kwargs):
        """with lab.broken_replication(): ... (break, then repair)."""
        self.break_replication(**kwargs)
        try:
            yield self
        finally:
            self.repair_replication()

    # ------------------------------------------------------------ tear-down
    def teardown(self):
        """Undo everything set-up did, in reverse; never raises. Returns
        the list of what went wrong (also logged). A lab that did not get
        the lock (another one runs) has nothing to undo."""
        errors = []
        if self._lock is None:
            return errors
        start = time.monotonic()

        def step(name, func, *args):
            t0 = time.monotonic()
            try:
                func(*args)
            except Exception as exc:  # keep tearing down
                errors.append('%s: %s' % (name, exc))
                self.log('tear-down %s FAILED: %s' % (name, exc))
            took = time.monotonic() - t0
            self.timings.append(('tear-down ' + name, took))
            if took >= 0.5:
                self.log('tear-down %s: %.1f s' % (name, took))

        step('mounts', self._teardown_mounts)
        if self._glusterd is not None and self._glusterd.poll() is None:
            if self._session_created:
                step('session', self._teardown_session)
            step('volumes', self._teardown_volumes)
            step('glusterd children', self._wait_glusterd_children, 60)
        step('glusterd', self._stop_glusterd)
        step('rsync hang', self._kill_hung)
        step('sshd', self._stop_sshd)
        step('stray processes', self._sweep)
        step('ssh files', self._restore_ssh)
        step('gluster files', self._restore_glusterd_files)
        step('run-time files', self._restore_runtime_dirs)
        step('bricks', self._remove_bricks)
        step('/etc/hosts', self._restore_hosts)
        if not errors:
            with contextlib.suppress(FileNotFoundError):
                STATE_FILE.unlink()
        took = time.monotonic() - start
        self.timings.append(('tear-down total', took))
        self.log('tear-down total: %.1f s%s' % (
            took, ' with %d error(s)' % len(errors) if errors else ''))
        self._lock.close()
        self._lock = None
        return errors

    def _teardown_mounts(self):
        for path in list(reversed(self._mounts)):
            self._umount(path)

    def _teardown_session(self):
        self._remove_session(self.master, self.slave_url, timeout=60)
        self._session_created = False

    def _teardown_volumes(self):
        present = self._volume_names()
        for volume in reversed(self._volumes_created):
            if volume in present:
                self.gluster('volume', 'stop', volume, 'force', check=False)
                self.gluster('volume', 'delete', volume)
        self._volumes_created = []

    def _stop_glusterd(self):
        if self._glusterd is not None:
            _stop_pid(self._glusterd.pid, timeout=15, popen=self._glusterd)
            self._glusterd = None

    def _stop_sshd(self):
        if self._sshd is not None:
            pid = self._sshd.pid
            children = [child for child, (ppid, state, _)
                        in _proc_table().items()
                        if ppid == pid and state != 'Z']
            _stop_pid(pid, timeout=10, popen=self._sshd)
            # sessions still open (gsyncd's ssh) outlive the listener
            for child in children:
                _stop_pid(child, timeout=5)
            self._sshd = None
        if self._state['run_sshd_made']:
            with contextlib.suppress(OSError):
                os.rmdir('/run/sshd')
            self._state['run_sshd_made'] = False

    def _sweep(self):
        """End what this lab started (directly or not: bricks, clients,
        gsyncd, ssh, a scheduler or tool run with lab.env) that outlived
        the rest of the tear-down."""
        names = set(self._state['volumes'])
        mine = _ancestors()
        stray = [(pid, cmd) for pid, (_, state, cmd) in _proc_table().items()
                 if state != 'Z' and pid not in mine
                 and (_lab_mark(pid) == str(self.workdir)
                      or self._lab_process(pid, cmd, names)
                      and not _lab_mark(pid))]
        for pid, cmd in stray:
            self.log('ending stray process %d: %s' % (pid, cmd[:200]))
            _stop_pid(pid, timeout=5)
        if stray:
            raise GeoRepError('%d stray process(es) had to be ended: %s' % (
                len(stray), ', '.join(str(p) for p, _ in stray)))

    def _restore_ssh(self):
        before = self._state['ssh_before']
        if before is None:
            return
        before = {name: base64.b64decode(data)
                  for name, data in before.items()}
        for name in os.listdir(SSH_DIR) if SSH_DIR.exists() else []:
            path = SSH_DIR / name
            if name not in before:
                path.unlink()
            elif name in ('authorized_keys', 'known_hosts'):
                # drop the lines added since (our key, push-pem's keys, the
                # host key of HOST), keep any other change
                old = set(before[name].splitlines())
                now = path.read_bytes().splitlines()
                kept = [line for line in now if line in old]
                if kept != now:
                    path.write_bytes(b''.join(line + b'\n' for line in kept))
        if self._state['ssh_dir_made'] and SSH_DIR.exists() \
                and not os.listdir(SSH_DIR):
            SSH_DIR.rmdir()
        self._state['ssh_before'] = None

    def _restore_glusterd_files(self):
        """Remove what the session left in glusterd's geo-replication
        directory (gsec_create's keys, the pushed pem file)."""
        before = self._state['georep_files_before']
        if before is None:
            return
        georep_dir = GLUSTERD_WORKDIR / 'geo-replication'
        for name in set(os.listdir(georep_dir)) - set(before):
            path = georep_dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
        self._state['georep_files_before'] = None

    def _restore_runtime_dirs(self):
        """Remove what glusterd and gsyncd added to their run-time
        directories (sockets, pid files), once glusterd is gone."""
        runtime = self._state['runtime_before']
        if runtime is None:
            return
        if self._glusterd is not None:
            raise GeoRepError('glusterd still runs: run-time files kept')
        for name, before in runtime.items():
            path = pathlib.Path(name)
            if not path.is_dir():
                continue
            if before is None:
                shutil.rmtree(path, ignore_errors=True)
                continue
            for entry in set(os.listdir(path)) - set(before):
                entry = path / entry
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
        self._state['runtime_before'] = None

    def _remove_bricks(self):
        for path in (self.brick_dir, self.mnt_dir):
            if path.exists():
                if any(is_mount(p) for p in [path] + list(path.glob('*'))):
                    raise GeoRepError('%s still has a mount: kept' % path)
                shutil.rmtree(path)
        for name in ('hang-rsync', 'hang-rsync.pids'):
            with contextlib.suppress(FileNotFoundError):
                (self.workdir / name).unlink()
        if not self.keep_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir)

    def _restore_hosts(self):
        line = self._state['hosts_line']
        if line is None:
            return
        text = HOSTS_FILE.read_text()
        if line in text:
            HOSTS_FILE.write_text(text.replace(line, '', 1))
        self._state['hosts_line'] = None


if __name__ == '__main__':
    print(skip_reason() or 'this machine can run the real-gluster lab')
