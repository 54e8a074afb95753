"""Issue 3: every fault injected into a run of the real script, against the
fake engine and the fake gluster, and the same invariants checked after each
(see `check`): nothing of this run left on the engine, nothing left mounted,
nothing deleted at the slave but this run's overlays, an event that tells the
truth, exit 0 or 1, no traceback, no password, one clear line.

The slave starts as last night's backup left it (a copy of the master), so
that a deletion of anything but this run's overlays shows.

Where a phase matters, a fault is aimed at it: with one VM, `GET /vms` is
only step 4 (the polls ask `GET /vms/{id}`), the first `GET /vms/{id}` is a
poll of the snapshot being created, and `after=('DELETE', ...)` (a
capability added to FakeEngine.fail) aims at the polls of the removal.
"""
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import threading

import pytest

from support.fake_engine import USER_REMOVE_SNAPSHOT_FINISHED_SUCCESS, FakeEngine
from support.site import (MASTER, PASSWORD, USER, Result, alive, assert_invariants,
                          mounts_under, needs_root, ovf_store_paths, tree, wait_for,
                          without_voltype)

pytestmark = needs_root

FAST = {'wait_timeout': '0.1', 'poll_interval': '0.1'}     # 6 s per wait
SHORT = {'wait_timeout': '0.03', 'poll_interval': '0.1'}   # 1.8 s: the waits meant to run out
REQUEST_TIMEOUT = '2'                                      # seconds, for the hanging answers
RUN_LIMIT = 60          # seconds; past this the tool hangs (the slowest case needs about 10)
ENGINE_RUN_LIMIT = 25   # the same for a fault of one engine call (the slowest needs about 6)
FAILED = ('Failed to backup gluster volume %s to remote site. Please check backup log '
          'for details' % MASTER)
SUCCEEDED = 'Successfully backed up gluster volume %s to remote site.' % MASTER


# -- the invariants ---------------------------------------------------------------

@dataclasses.dataclass
class Expect:
    """What a run must end with.

    code: 0 (the fault was absorbed) or 1 (the run failed).
    event: 'normal', 'alert' or None (the engine could not be reached: none).
    line: a regex that one ERROR (code 1) or WARNING/ERROR (code 0) line of
      the log must match: the clear line naming what failed; None where the
      fault never reaches the tool (absorbed below it, by libcurl or the SDK).
    dropped: this run's overlays must be gone from the slave.
    left: the fake makes removing the snapshot impossible: the alert (or the
      log, when no event can be posted) must name each snapshot left.
    mount_left: umount refuses for ever: the alert must name the mount point.
    """
    code: int
    event: str = None
    line: str = None
    dropped: bool = False
    left: bool = False
    mount_left: bool = False


def absorbed(line=None):
    return Expect(0, 'normal', line, dropped=True)


def failed(line, dropped=False, left=False):
    return Expect(1, 'alert', line, dropped=dropped, left=left)


def unreachable(line, left=False, dropped=False):
    return Expect(1, None, line, left=left, dropped=dropped)


@dataclasses.dataclass
class Before:
    slave: dict
    events: int


def prepare(site, vms=('web',)):
    """Add the VMs, make the slave what last night's backup left (a copy of
    the master), and return what must survive."""
    site.engine.snapshot_delay = site.engine.merge_delay = 0.1   # ready at the first poll
    for name in vms:
        site.add_vm(name)
    shutil.copytree(site.master, site.slave, dirs_exist_ok=True)
    return Before(slave=tree(site.slave), events=len(site.engine.events))


def check(site, result, before, expect):
    """The invariants of every run, whatever the fault."""
    output = result.output
    print('exit status %s\n%s' % (result.code, output))   # shown when the test fails
    assert 'Traceback' not in output, output
    assert PASSWORD not in output
    for call in site.calls():
        assert PASSWORD not in ' '.join(call['argv'])
    assert site.engine.errors == []
    assert result.code == expect.code, output
    if not expect.left and not expect.mount_left:
        assert_invariants(site, result)

    events = site.engine.events[before.events:]
    if expect.event is None:
        assert events == [], events
    else:
        assert [e['severity'] for e in events] == [expect.event], (events, output)
        description = events[0]['description']
        assert description.startswith(FAILED if expect.event == 'alert' else SUCCEEDED)
    told = (events[0]['description'] if events else '') + '\n' + result.err

    # the one clear line naming what failed
    levels = (' ERROR ',) if expect.code else (' ERROR ', ' WARNING ')
    lines = [l for l in result.err.splitlines() if any(level in l for level in levels)]
    if expect.code == 0:
        assert not [l for l in lines if ' ERROR ' in l], output
    if expect.line is not None:
        assert any(re.search(expect.line, l) for l in lines), (expect.line, output)

    # the engine: nothing of this run left, or what is left is named
    left = site.our_snapshots()
    if expect.left:
        assert left, 'the fake was meant to keep a snapshot'
        for ids in left.values():
            for snapshot_id in ids:
                assert snapshot_id in (events[0]['description'] if events else result.err)
    else:
        assert left == {}, (left, output)

    # the mounts: none left, the tool's directory gone
    if expect.mount_left:
        points = mounts_under(site.tmp)
        assert points, 'umount was meant to refuse for ever'
        for point in points:
            assert point in told
    else:
        assert not mounts_under(site.tmp), mounts_under(site.tmp)
        assert list(site.scratch.iterdir()) == []

    # the slave: nothing deleted but this run's overlays
    slave = tree(site.slave)
    for path, content in before.slave.items():
        assert path in slave, 'deleted at the slave: %s' % path
        if path in ovf_store_paths(site.engine):
            continue        # written by the engine during the run
        if path.endswith('.meta'):
            assert without_voltype(slave[path]) == without_voltype(content), path
        else:
            assert slave[path] == content, path
    extra = set(slave) - set(before.slave)
    known = {os.path.basename(p).split('.')[0] for p in before.slave}
    for path in extra:     # what is new can only be an overlay made during this run
        parts = path.split(os.sep)
        assert len(parts) == 4 and parts[1] == 'images', path
        assert parts[3].split('.')[0] not in known, path
    if expect.dropped:
        assert extra == set(), extra

    # the status file tells the same, whatever the way out (issue 11)
    status = json.loads((site.status_dir / ('%s.json' % MASTER)).read_text())
    assert status['exit_status'] == result.code, status
    assert bool(status['failures']) == (result.code != 0), status
    assert status['succeeded'] == (result.code == 0)
    assert ('summary: status: written to %s' % (site.status_dir / ('%s.json' % MASTER))
            in result.err), result.err


# -- runs that are driven while they go on ----------------------------------------

class Live:
    """The tool started in the background, its log read as it comes."""

    def __init__(self, site, *args, config=None):
        self.process = site.start(*args, config=config)
        self.err = []
        self.out = []
        self.readers = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                        for stream, into in ((self.process.stderr, self.err),
                                             (self.process.stdout, self.out))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line)

    def wait_log(self, text, timeout=30):
        wait_for(lambda: any(text in line for line in list(self.err)), timeout=timeout,
                 message='%r in the log' % text)

    def finish(self, timeout=RUN_LIMIT):
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail('vmbackup.py was still running after %d s (killed); its log:\n%s'
                        % (timeout, ''.join(self.err)))
        for reader in self.readers:
            reader.join(10)
        return Result(self.process.returncode, ''.join(self.out), ''.join(self.err))


def run(site, *args, config=None, timeout=RUN_LIMIT):
    """Run the tool to its end; fail the test clearly if it never ends."""
    try:
        return site.run(*args, config=config, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        pytest.fail('vmbackup.py was still running after %d s (killed); its log:\n%s'
                    % (timeout, (expired.stderr or b'').decode(errors='replace')))


def request_seen(engine, method, regex):
    return lambda: any(r['method'] == method and re.search(regex, r['path'])
                       for r in list(engine.requests))


# -- 1. the engine API, call by call, fault by fault ----------------------------

LOGIN = ('POST', r'^/ovirt-engine/sso/oauth/token$', None)
API_ROOT = ('GET', r'^/$', None)
STORAGE_DOMAINS = ('GET', r'^/storagedomains$', None)
VM_LIST = ('GET', r'^/vms$', None)                     # one VM: step 4 only
VM_POLL = ('GET', r'^/vms/[^/]+$', None)              # the first: the snapshot being made
VM_POLL_REMOVAL = ('GET', r'^/vms/[^/]+$', ('DELETE', r'^/vms/[^/]+/snapshots/'))
SNAPSHOT_ADD = ('POST', r'^/vms/{db}/snapshots$', None)    # of VM db; VM web goes on
SNAPSHOT_REMOVE = ('DELETE', r'^/vms/[^/]+/snapshots/[^/]+$', None)
CLUSTERS = ('GET', r'^/clusters$', None)
EVENTS = ('GET', r'^/events$', None)                  # the feed: the first, its start
EVENT = ('POST', r'^/events$', None)
LOGOUT = ('POST', r'^/ovirt-engine/services/sso-logout$', None)

ONCE, EVER = 1, None

NO_LOGIN = r'the engine at https://localhost:\d+/ovirt-engine/api refused the login of admin@internal'
NO_REACH = r'cannot reach the engine at https://localhost:\d+/ovirt-engine/api: '
NO_API = NO_REACH
SD_ERROR = r'could not list the storage domains: '
VM_ERROR = r'could not list the running VMs: '
NOT_POSTED = r'could not post the event'


def engine_case(name, target, kind, count, expect, status=500, config=None, marks=(),
                limit=ENGINE_RUN_LIMIT):
    return pytest.param(target, kind, status, count, expect, config or {}, limit, id=name,
                        marks=marks)


ENGINE_CASES = [
    # step 3: the login, and the API root that tests the connection
    engine_case('login-answers-500', LOGIN, 'fault', ONCE, unreachable(NO_LOGIN)),
    engine_case('login-answers-404', LOGIN, 'fault', ONCE, unreachable(NO_LOGIN), status=404),
    engine_case('login-connection-closed', LOGIN, 'close', ONCE, unreachable(NO_REACH)),
    engine_case('login-answer-lost', LOGIN, 'drop', ONCE, unreachable(NO_REACH)),
    engine_case('login-hangs', LOGIN, 'hang', ONCE,
                unreachable(r'no answer after 2 seconds while logging in'),
                limit=15),
    engine_case('login-answers-401', LOGIN, 'expire', ONCE, unreachable(NO_LOGIN)),
    engine_case('api-root-answers-500', API_ROOT, 'fault', ONCE, unreachable(NO_API)),
    engine_case('api-root-connection-closed', API_ROOT, 'close', ONCE, unreachable(NO_REACH)),
    engine_case('api-root-answer-lost', API_ROOT, 'drop', ONCE, unreachable(NO_REACH)),
    engine_case('api-root-hangs', API_ROOT, 'hang', ONCE, unreachable(NO_API)),
    engine_case('api-root-token-expired', API_ROOT, 'expire', ONCE, absorbed()),
    # step 4: the storage domains and the VM list
    engine_case('storage-domains-answer-500', STORAGE_DOMAINS, 'fault', ONCE, failed(SD_ERROR)),
    engine_case('storage-domains-answer-404', STORAGE_DOMAINS, 'fault', ONCE, failed(SD_ERROR),
                status=404),
    engine_case('storage-domains-answer-409', STORAGE_DOMAINS, 'fault', ONCE, failed(SD_ERROR),
                status=409),
    engine_case('storage-domains-connection-closed-once', STORAGE_DOMAINS, 'close', ONCE,
                absorbed()),
    engine_case('storage-domains-connection-closed-for-ever', STORAGE_DOMAINS, 'close', EVER,
                failed(SD_ERROR)),
    engine_case('storage-domains-answer-lost', STORAGE_DOMAINS, 'drop', ONCE, absorbed()),
    engine_case('storage-domains-hang', STORAGE_DOMAINS, 'hang', ONCE, failed(SD_ERROR)),
    engine_case('storage-domains-token-expired', STORAGE_DOMAINS, 'expire', ONCE, absorbed()),
    engine_case('vm-list-answers-500', VM_LIST, 'fault', ONCE, failed(VM_ERROR)),
    engine_case('vm-list-answers-404', VM_LIST, 'fault', ONCE, failed(VM_ERROR), status=404),
    engine_case('vm-list-answers-a-proxy-error-page', VM_LIST, 'html', ONCE,
                failed(VM_ERROR), status=503),
    engine_case('vm-list-connection-closed-once', VM_LIST, 'close', ONCE, absorbed()),
    engine_case('vm-list-connection-closed-for-ever', VM_LIST, 'close', EVER, failed(VM_ERROR)),
    engine_case('vm-list-answer-lost', VM_LIST, 'drop', ONCE, absorbed()),
    engine_case('vm-list-hangs', VM_LIST, 'hang', ONCE, failed(VM_ERROR)),
    engine_case('vm-list-token-expired', VM_LIST, 'expire', ONCE, absorbed()),
    # step 5: the snapshot request (of VM db; VM web goes on), and the polls
    engine_case('snapshot-request-answers-500', SNAPSHOT_ADD, 'fault', ONCE,
                failed(r'VM db: no snapshot: the snapshot request failed: ')),
    engine_case('snapshot-request-answers-404', SNAPSHOT_ADD, 'fault', ONCE,
                failed(r'VM db: no snapshot: the snapshot request failed: '), status=404),
    engine_case('snapshot-request-answers-409', SNAPSHOT_ADD, 'fault', ONCE,
                failed(r'VM db: no snapshot: the snapshot request failed: '), status=409),
    engine_case('snapshot-request-connection-closed', SNAPSHOT_ADD, 'close', ONCE,
                failed(r'VM db: no snapshot: the snapshot request failed: ')),
    engine_case('snapshot-request-connection-closed-for-ever', SNAPSHOT_ADD, 'close', EVER,
                failed(r'VM db: no snapshot: the snapshot request failed: ')),
    engine_case('snapshot-request-answer-lost', SNAPSHOT_ADD, 'drop', ONCE,
                absorbed(r'VM db: the answer to the snapshot request was lost')),
    engine_case('snapshot-request-hangs', SNAPSHOT_ADD, 'hang', ONCE,
                failed(r'VM db: no snapshot: the snapshot request failed: ')),
    engine_case('snapshot-request-token-expired', SNAPSHOT_ADD, 'expire', ONCE, absorbed()),
    engine_case('snapshot-poll-answers-500', VM_POLL, 'fault', ONCE,
                absorbed(r'VM web: could not check its snapshot')),
    engine_case('snapshot-poll-answers-404', VM_POLL, 'fault', ONCE,
                failed(r'VM web disappeared while its snapshot was being created'), status=404),
    engine_case('snapshot-poll-answers-409', VM_POLL, 'fault', ONCE,
                absorbed(r'VM web: could not check its snapshot'), status=409),
    engine_case('snapshot-poll-connection-closed', VM_POLL, 'close', ONCE, absorbed()),
    engine_case('snapshot-poll-answer-lost', VM_POLL, 'drop', ONCE, absorbed()),
    engine_case('snapshot-poll-hangs', VM_POLL, 'hang', ONCE,
                absorbed(r'VM web: could not check its snapshot')),
    engine_case('snapshot-poll-token-expired', VM_POLL, 'expire', ONCE, absorbed()),
    engine_case('every-poll-answers-500', VM_POLL, 'fault', EVER,
                failed(r'VM web: the snapshot was not ready after'), config=SHORT),
    engine_case('every-poll-hangs', VM_POLL, 'hang', EVER,
                failed(r'VM web: the snapshot was not ready after'), config=SHORT),
    # steps 5 and 8: the engine's event feed (without it, every VM at every check)
    engine_case('events-answer-500-once', EVENTS, 'fault', ONCE, absorbed()),
    engine_case('events-answer-500-for-ever', EVENTS, 'fault', EVER, absorbed()),
    engine_case('events-connection-closed-for-ever', EVENTS, 'close', EVER, absorbed()),
    engine_case('events-hang', EVENTS, 'hang', ONCE, absorbed()),
    # step 8: the removal and its polls
    engine_case('removal-answers-500-once', SNAPSHOT_REMOVE, 'fault', ONCE, absorbed()),
    engine_case('removal-answers-500-for-ever', SNAPSHOT_REMOVE, 'fault', EVER,
                failed(r'VM web: snapshot \S+ could not be removed', dropped=True, left=True),
                config=SHORT),
    engine_case('removal-answers-404', SNAPSHOT_REMOVE, 'fault', ONCE, absorbed(), status=404),
    # an HTML page is no engine answer: the SDK gives no code, the removal is sent again
    engine_case('removal-answers-a-proxy-404-page', SNAPSHOT_REMOVE, 'html', ONCE, absorbed(),
                status=404),
    engine_case('removal-answers-409-once', SNAPSHOT_REMOVE, 'fault', ONCE, absorbed(),
                status=409),
    engine_case('removal-answers-409-for-ever', SNAPSHOT_REMOVE, 'fault', EVER,
                failed(r'VM web: snapshot \S+ could not be removed', dropped=True, left=True),
                status=409, config=SHORT),
    engine_case('removal-connection-closed', SNAPSHOT_REMOVE, 'close', ONCE, absorbed()),
    engine_case('removal-answer-lost', SNAPSHOT_REMOVE, 'drop', ONCE, absorbed()),
    engine_case('removal-hangs', SNAPSHOT_REMOVE, 'hang', ONCE, absorbed()),
    engine_case('removal-token-expired', SNAPSHOT_REMOVE, 'expire', ONCE, absorbed()),
    engine_case('removal-poll-answers-500', VM_POLL_REMOVAL, 'fault', ONCE, absorbed()),
    engine_case('removal-poll-connection-closed', VM_POLL_REMOVAL, 'close', ONCE, absorbed()),
    engine_case('removal-poll-answer-lost', VM_POLL_REMOVAL, 'drop', ONCE, absorbed()),
    engine_case('removal-poll-hangs', VM_POLL_REMOVAL, 'hang', ONCE, absorbed()),
    engine_case('removal-poll-token-expired', VM_POLL_REMOVAL, 'expire', ONCE, absorbed()),
    engine_case('every-removal-poll-answers-500', VM_POLL_REMOVAL, 'fault', EVER,
                failed(r'VM web: snapshot \S+ could not be removed', dropped=True),
                config=SHORT),
    # step 9: the cluster look-up and the event
    engine_case('cluster-lookup-answers-500', CLUSTERS, 'fault', ONCE,
                absorbed(r'could not look up cluster Default')),
    engine_case('cluster-lookup-connection-closed-for-ever', CLUSTERS, 'close', EVER,
                absorbed(r'could not look up cluster Default')),
    engine_case('cluster-lookup-hangs', CLUSTERS, 'hang', ONCE,
                absorbed(r'could not look up cluster Default')),
    engine_case('cluster-lookup-token-expired', CLUSTERS, 'expire', ONCE, absorbed()),
    engine_case('event-answers-500', EVENT, 'fault', ONCE, unreachable(NOT_POSTED, dropped=True)),
    engine_case('event-answers-409-once', EVENT, 'fault', ONCE, absorbed(), status=409),
    engine_case('event-answers-409-for-ever', EVENT, 'fault', EVER,
                unreachable(NOT_POSTED, dropped=True), status=409),
    engine_case('event-connection-closed-for-ever', EVENT, 'close', EVER,
                unreachable(NOT_POSTED, dropped=True)),
    engine_case('event-answer-lost', EVENT, 'drop', ONCE, absorbed()),
    engine_case('event-hangs', EVENT, 'hang', ONCE, unreachable(NOT_POSTED, dropped=True)),
    engine_case('event-token-expired', EVENT, 'expire', ONCE, absorbed()),
    # step 10: the logout (the backup is done: a warning)
    engine_case('logout-answers-500', LOGOUT, 'fault', ONCE,
                absorbed(r'could not log out of the engine')),
    engine_case('logout-connection-closed', LOGOUT, 'close', ONCE,
                absorbed(r'could not log out of the engine')),
    engine_case('logout-answer-lost', LOGOUT, 'drop', ONCE,
                absorbed(r'could not log out of the engine')),
    engine_case('logout-hangs', LOGOUT, 'hang', ONCE,
                absorbed(r'could not log out of the engine')),
    engine_case('logout-token-expired', LOGOUT, 'expire', ONCE,
                absorbed(r'could not log out of the engine')),
]


@pytest.mark.parametrize('target, kind, status, count, expect, snapshot, limit', ENGINE_CASES)
def test_a_fault_of_one_engine_call_is_survived_and_told(
        site, target, kind, status, count, expect, snapshot, limit):
    engine = site.engine
    before = prepare(site, vms=('web', 'db') if target is SNAPSHOT_ADD else ('web',))
    method, regex, after = target
    regex = regex.format(db=engine.vm('db')['id'] if target is SNAPSHOT_ADD else '')
    engine.fail(method, regex, kind=kind, status=status, count=count, after=after)
    connection = {'timeout': REQUEST_TIMEOUT} if kind == 'hang' else {}
    result = run(site, config=site.config(snapshot=dict(FAST, **snapshot),
                                          connection=connection,
                                          event={'cluster': 'Default'}),
                 timeout=limit)
    assert any(r.get('fault') == kind for r in engine.requests), 'the fault was never injected'
    check(site, result, before, expect)


# -- 2. faults of the engine's own making, and an engine that stops ---------------

def open_gate(site):
    (site.root / 'gate').touch()


def gate(site):
    return str(site.root / 'gate')


def when_the_scheduler_runs(site):
    return wait_for(lambda: site.calls('schedule_georep'), message='the scheduler')


def stuck_for_ever(site, live):
    pass


def stuck_until_the_scheduler_runs(site, live):
    when_the_scheduler_runs(site)
    site.engine.unstick('web')
    open_gate(site)


def stopped_during_the_scheduler_then_back(site, live):
    when_the_scheduler_runs(site)
    site.engine.stop()
    site.engine.forget_sessions()         # a restarted engine knows no token
    open_gate(site)
    # the copy is confirmed with the engine before the slave is changed
    live.wait_log('could not check 1 snapshots on the engine')
    site.engine.start()


def stopped_during_the_scheduler_for_good(site, live):
    when_the_scheduler_runs(site)
    site.engine.stop()
    open_gate(site)


def stopped_while_the_snapshot_is_made_then_back(site, live):
    wait_for(request_seen(site.engine, 'POST', r'/snapshots$'), message='the snapshot request')
    site.engine.stop()
    site.engine.forget_sessions()
    live.wait_log('could not check its snapshot')
    site.engine.start()
    site.engine.unstick('web')


def vm_shut_down_during_the_scheduler(site, live):
    when_the_scheduler_runs(site)
    site.engine.set_vm_status('db', 'down')
    open_gate(site)


def snapshot_request_carried_out_late(site, live):
    """The engine takes the request past the tool's timeout: it is done
    after the tool has given up on it (and looked once)."""
    when_the_scheduler_runs(site)
    site.engine.release()
    wait_for(lambda: 'db' in site.our_snapshots(), message="db's snapshot")
    open_gate(site)


def nothing(site, live):
    pass


def stick(name):
    return lambda site: site.engine.stick_snapshot(name)


def fail_merge(times):
    return lambda site: site.engine.fail_merge('web', times=times)


def hang_snapshot_of_db(site):
    site.engine.fail('POST', r'^/vms/%s/snapshots$' % site.engine.vm('db')['id'], kind='hang')


def state_case(name, vms, setup, drive, expect, gated=False, config=None, marks=()):
    return pytest.param(vms, setup, drive, expect, gated, config or {}, id=name, marks=marks)


STATE_CASES = [
    state_case('a-snapshot-that-never-leaves-locked', ('web', 'db'), stick('web'),
               stuck_for_ever,
               failed(r'VM web: the snapshot was not ready after', dropped=True, left=True),
               config={'snapshot': SHORT}),
    state_case('a-snapshot-locked-until-the-scheduler-runs', ('web', 'db'), stick('web'),
               stuck_until_the_scheduler_runs, failed(r'VM web: the snapshot was not ready after'),
               gated=True, config={'snapshot': SHORT}),
    state_case('a-merge-that-fails-once', ('web',), fail_merge(1), nothing,
               absorbed(r'VM web: the merge of snapshot \S+ failed; removing it again')),
    state_case('a-merge-that-always-fails', ('web',), fail_merge(10), nothing,
               failed(r'VM web: snapshot \S+ could not be removed: its merge failed',
                      dropped=True, left=True)),
    state_case('the-engine-stops-during-the-scheduler-and-comes-back', ('web',), None,
               stopped_during_the_scheduler_then_back, absorbed(), gated=True),
    state_case('the-engine-stops-during-the-scheduler-for-good', ('web',), None,
               stopped_during_the_scheduler_for_good,
               unreachable(r'VM web: snapshot \S+ could not be removed', left=True),
               gated=True, config={'snapshot': SHORT}),
    state_case('the-engine-stops-while-the-snapshot-is-made-and-comes-back', ('web',), stick('web'),
               stopped_while_the_snapshot_is_made_then_back,
               absorbed(r'VM web: could not check its snapshot')),
    state_case('a-vm-shut-down-during-the-backup', ('web', 'db'), None,
               vm_shut_down_during_the_scheduler, absorbed(), gated=True),
    state_case('a-snapshot-request-carried-out-after-the-tool-gave-up', ('web', 'db'),
               hang_snapshot_of_db, snapshot_request_carried_out_late,
               failed(r'VM db: no snapshot: the snapshot request failed: '), gated=True,
               config={'connection': {'timeout': REQUEST_TIMEOUT}}),
]


@pytest.mark.parametrize('vms, setup, drive, expect, gated, config', STATE_CASES)
def test_an_engine_that_misbehaves_or_stops_is_survived_and_told(
        site, stop_process, vms, setup, drive, expect, gated, config):
    before = prepare(site, vms=vms)
    if setup:
        setup(site)
    if gated:
        site.behave(schedule_georep={'gate': gate(site)})
    sections = {'snapshot': dict(FAST, **config.get('snapshot', {})),
                'connection': config.get('connection', {})}
    live = Live(site, config=site.config(**sections))
    stop_process(live.process)
    drive(site, live)
    result = live.finish()
    check(site, result, before, expect)
    if expect.left:      # the others went on: only the stuck VM's snapshot is left
        assert set(site.our_snapshots()) == {'web'}


# -- 2b. the engine's progress feed: lost, refused; a guest not frozen ----------

def lose(code):
    return lambda site: site.engine.lose_events(code, 'web')


def lose_and_refuse_the_job_search(site):
    site.engine.lose_events(68, 'web')
    site.engine.job_search = 'refuse'


def lose_and_fail_the_job_search(site):
    site.engine.lose_events(356, 'web')
    site.engine.fail('GET', r'^/jobs$', count=None)


def refuse_from(site):
    site.engine.events_from = 'refuse'


def ignore_from(site):
    site.engine.events_from = 'ignore'


def freeze_fails(site):
    site.engine.fail_freeze('web')


def no_guest_agent(site):
    site.engine.set_guest_agent('web', False)


def jobs_counted(site, result):
    """The safety net asked for the jobs of this run and then looked at web."""
    assert any(r['path'] == '/jobs' and r['query'].get('search', [''])[0].startswith(
        'correlation_id=') for r in site.engine.requests)


def one_debug_line(text):
    def check(site, result):
        said = [line for line in result.err.splitlines() if ' DEBUG ' in line and text in line]
        assert len(said) == 1, result.err
    return check


def only_db_backed_up(site, result):
    """web's snapshot was removed, but nothing of web changed at the slave:
    its overlays of this run are still there; db's are gone."""
    for overlay in site.engine.overlays:
        path = site.slave / site.sd_id / 'images' / overlay['disk_id'] / overlay['overlay']
        assert path.exists() == (overlay['vm'] == 'web'), (overlay, result.err)
    assert 'VM web not backed up' in site.engine.events[-1]['description']


NOT_FROZEN = r'VM web: its snapshot is crash-consistent only: the engine could not freeze'
NO_AGENT = r'VM web: its snapshot is crash-consistent only: no guest agent reports from it'
REQUIRED = r'VM web not backed up: its snapshot is crash-consistent only: %s'


def feed_case(name, setup, expect, args=(), config=None, extra=None, vms=('web',)):
    return pytest.param(setup, expect, args, config or {}, extra, vms, id=name)


FEED_CASES = [
    feed_case('a-lost-end-of-snapshot-event-is-caught-by-the-job-count', lose(68),
              absorbed(), extra=jobs_counted),
    feed_case('a-lost-end-of-merge-event-is-caught-by-the-job-count', lose(356),
              absorbed(), extra=jobs_counted),
    feed_case('a-lost-event-and-a-refused-job-search-is-caught-by-a-full-look',
              lose_and_refuse_the_job_search, absorbed(), args=('-v',),
              extra=one_debug_line('the engine refused jobs?search=correlation_id=')),
    feed_case('a-lost-event-and-a-failing-job-search-is-caught-by-a-full-look',
              lose_and_fail_the_job_search, absorbed()),
    feed_case('an-engine-that-refuses-from-is-asked-the-old-way', refuse_from, absorbed(),
              args=('-v',), extra=one_debug_line('the engine refused events?from=')),
    feed_case('an-engine-that-ignores-from-is-asked-the-old-way', ignore_from, absorbed(),
              args=('-v',), extra=one_debug_line('the engine refused events?from=')),
    feed_case('a-guest-not-frozen-is-crash-consistent-only', freeze_fails, absorbed(NOT_FROZEN)),
    feed_case('a-guest-not-frozen-fails-with-require-quiesce', freeze_fails,
              failed(REQUIRED % 'the engine could not freeze'),
              args=('--require-quiesce',), extra=only_db_backed_up, vms=('web', 'db')),
    feed_case('a-vm-without-guest-agent-is-crash-consistent-only', no_guest_agent,
              absorbed(NO_AGENT)),
    feed_case('a-vm-without-guest-agent-fails-with-require-quiesce-in-the-config',
              no_guest_agent, failed(REQUIRED % 'no guest agent reports from it'),
              config={'require_quiesce': 'yes'}, extra=only_db_backed_up, vms=('web', 'db')),
]


@pytest.mark.parametrize('setup, expect, args, snapshot, extra, vms', FEED_CASES)
def test_a_lost_or_refused_feed_or_a_guest_not_frozen_is_survived_and_told(
        site, setup, expect, args, snapshot, extra, vms):
    before = prepare(site, vms=vms)
    setup(site)
    result = run(site, *args, config=site.config(snapshot=dict(FAST, **snapshot)),
                 timeout=ENGINE_RUN_LIMIT)
    check(site, result, before, expect)
    if extra is not None:
        extra(site, result)


# -- 3. the child processes: the scheduler, the mount client, umount --------------

def child_case(name, behaviour, expect, args=(), gluster=None, remote_cleanup=True, marks=()):
    return pytest.param(behaviour, expect, args, gluster or {}, remote_cleanup, id=name,
                        marks=marks)


CHILD_CASES = [
    child_case('the-scheduler-times-out', {'schedule_georep': {'exit': 1, 'copy': True}},
               failed(r'geo-replication failed: the checkpoint was not reached within '
                      r'--timeout 5 minutes'), args=('-t', '5'), remote_cleanup=False),
    child_case('a-gluster-command-of-the-scheduler-fails', {'schedule_georep': {'exit': 255}},
               failed(r'geo-replication failed: a gluster command failed'),
               remote_cleanup=False),
    child_case('the-scheduler-is-killed', {'schedule_georep': {'signal': 'SIGKILL'}},
               failed(r'geo-replication failed: the scheduler was killed by SIGKILL'),
               remote_cleanup=False),
    child_case('the-scheduler-hangs-past-its-timeout-and-grace',
               {'schedule_georep': {'hang': True}},
               failed(r'the scheduler did not end within --timeout 0.05 minutes and 0 seconds'),
               args=('-t', '0.05'), gluster={'scheduler_grace': '0'}, remote_cleanup=False),
    child_case('the-mount-client-fails', {'glusterfs': {'exit': 1}},
               failed(r'cannot mount the slave volume \S+: glusterfs exited with status 1')),
    child_case('the-mount-client-succeeds-without-mounting', {'glusterfs': {'mount': False}},
               failed(r'cannot mount the slave volume \S+: glusterfs succeeded but \S+ is not '
                      r'a mount point')),
    child_case('the-mount-client-hangs', {'glusterfs': {'hang': True}},
               failed(r'cannot mount the slave volume \S+: glusterfs did not finish within 1 '
                      r'seconds'), gluster={'mount_timeout': '1'}),
    child_case('umount-is-busy-once', {'umount': {'busy': 1}},
               absorbed(r'could not unmount \S+: umount: \S+: target is busy')),
    child_case('umount-stays-busy-until-the-lazy-unmount',
               {'umount': {'busy': 5, 'lazy_detaches': True}},
               absorbed(r'could not unmount \S+: umount: \S+: target is busy')),
    child_case('umount-refuses-for-ever', {'umount': {'busy': 5}},
               Expect(1, 'alert', r'the slave volume is still mounted at \S+: unmount it by hand',
                      dropped=True, mount_left=True)),
]


@pytest.mark.parametrize('behaviour, expect, args, gluster, remote_cleanup', CHILD_CASES)
def test_a_child_process_that_fails_is_survived_and_told(
        site, behaviour, expect, args, gluster, remote_cleanup):
    before = prepare(site)
    site.behave(**behaviour)
    result = run(site, *args, config=site.config(snapshot=FAST, gluster=gluster),
                 timeout=RUN_LIMIT + 70)
    check(site, result, before, expect)
    assert bool(site.mounts()) == remote_cleanup
    for call in site.calls('schedule_georep'):
        assert not alive(call['pid'])


# -- 4. SIGTERM and SIGINT at each step, and a second run -------------------------

def hang_the_vm_list(site):
    site.engine.fail('GET', r'^/vms$', kind='hang')


def interrupted(signum, dropped=False):
    return failed(r'the backup was interrupted by %s' % signal.Signals(signum).name,
                  dropped=dropped)


def no_snapshot_requested(site):
    assert not request_seen(site.engine, 'POST', r'/snapshots$')()


def no_scheduler(site):
    assert site.calls('schedule_georep') == []


def no_remote_cleanup(site):
    assert site.mounts() == []
    (call,) = site.calls('schedule_georep')
    wait_for(lambda: not alive(call['pid']), timeout=10, message='the scheduler to end')


def mount_stopped(site):
    (call,) = site.mounts()
    wait_for(lambda: not alive(call['pid']), timeout=10, message='the mount client to end')


def slow_merges(site):
    site.engine.merge_delay = 2.0


def merges_waited_for(site):
    """The signal did not cut the wait for the merges short: the engine had
    finished the run's merge (its event 356) before the tool posted its own
    event, the last thing it does."""
    merged = site.engine.engine_events(USER_REMOVE_SNAPSHOT_FINISHED_SUCCESS)
    assert [event['vm_id'] for event in merged] == [site.engine.vm('web')['id']]
    posted = [event for event in site.engine._event_records
              if event.get('origin') == 'ovirt-georep-backup']
    assert posted[-1]['time'] >= merged[-1]['time']


SIGNAL_STEPS = [
    # (step, setup before the run, what shows the step is reached, what to do once the
    #  signal is taken, whether the overlays are dropped, extra check)
    ('before-the-snapshots-while-the-vm-list-hangs', hang_the_vm_list,
     lambda site: request_seen(site.engine, 'GET', r'^/vms$')(),
     lambda site: site.engine.release(), False, no_snapshot_requested),
    ('while-waiting-for-the-snapshots', stick('web'),
     lambda site: request_seen(site.engine, 'POST', r'/snapshots$')(),
     lambda site: site.engine.unstick('web'), False, no_scheduler),
    ('during-the-scheduler', lambda site: site.behave(schedule_georep={'hang': True}),
     lambda site: site.calls('schedule_georep'), None, False, no_remote_cleanup),
    ('during-the-mount', lambda site: site.behave(glusterfs={'gate': gate(site)}),
     lambda site: site.mounts(), None, False, mount_stopped),
    ('during-the-unmount', lambda site: site.behave(umount={'gate': gate(site)}),
     lambda site: site.calls('umount'), open_gate, True, None),
    ('during-the-removals-after-the-remote-cleanup', slow_merges,
     lambda site: (site.calls('umount')
                   and request_seen(site.engine, 'DELETE', r'/snapshots/')()),
     None, True, merges_waited_for),
]

SIGNAL_CASES = [
    pytest.param(signum, setup, reached, after, dropped, extra,
                 id='%s-%s' % (signal.Signals(signum).name, step))
    for step, setup, reached, after, dropped, extra in SIGNAL_STEPS
    for signum in (signal.SIGTERM, signal.SIGINT)
]


@pytest.mark.parametrize('signum, setup, reached, after, dropped, extra', SIGNAL_CASES)
def test_a_signal_at_any_step_stops_the_run_and_still_cleans_up(
        site, stop_process, signum, setup, reached, after, dropped, extra):
    before = prepare(site)
    setup(site)
    live = Live(site, config=site.config(snapshot=FAST, gluster={'mount_timeout': '30'}))
    stop_process(live.process)
    wait_for(lambda: reached(site), message='the step')
    live.process.send_signal(signum)
    live.wait_log('%s received' % signal.Signals(signum).name)
    if after:
        after(site)
    result = live.finish()
    check(site, result, before, interrupted(signum, dropped))
    assert 'did not finish within' not in result.err      # the signal ended it, not a timeout
    if extra:
        extra(site)


def test_a_second_run_while_the_first_holds_the_lock_exits_3_and_does_nothing(
        site, stop_process):
    before = prepare(site)
    site.behave(schedule_georep={'gate': gate(site)})
    first = Live(site, config=site.config(snapshot=FAST))
    stop_process(first.process)
    when_the_scheduler_runs(site)
    # gluster's CLI is left out: the first run reads geo-replication's status
    # while its scheduler runs (read-only)
    requests, calls = len(site.engine.requests), len(site.calls_but_preflight())
    second = run(site, config=site.config(snapshot=FAST, name='second.cfg'))
    assert second.code == 3, second.output
    assert 'another backup of volume %s is running (pid %d' % (MASTER, first.process.pid) \
        in second.err
    assert 'Traceback' not in second.output and PASSWORD not in second.output
    assert len(site.engine.requests) == requests and len(site.calls_but_preflight()) == calls
    assert [name for name in site.our_snapshots()] == ['web']   # the first's, untouched
    open_gate(site)
    check(site, first.finish(), before, absorbed())


# -- 5. an engine that can't be trusted -------------------------------------------

def test_a_ca_that_did_not_sign_the_engine_certificate_is_one_clear_line(site, tmp_path):
    import trustme
    before = prepare(site)
    other = tmp_path / 'other-ca.pem'
    trustme.CA().cert_pem.write_to_path(str(other))
    result = run(site, config=site.config(connection={'ca_file': str(other)}))
    check(site, result, before, unreachable(
        r'cannot verify the TLS certificate of the engine at https://localhost:\d+/'))
    assert site.engine.requests == []


def test_an_engine_certificate_for_another_host_name_is_one_clear_line(site, ca):
    before = prepare(site)
    with FakeEngine(ca=ca, user=USER, password=PASSWORD,
                    cert_names=('engine.example.com',)) as other:
        server = 'https://127.0.0.1:%d/ovirt-engine/api' % other.port
        result = run(site, config=site.config(connection={'server': server}))
        assert other.requests == []
    check(site, result, before, unreachable(
        r'the engine at https://127\.0\.0\.1:\d+/ovirt-engine/api: .*(host ?name|subject name)'))
    (line,) = [l for l in result.err.splitlines() if '127.0.0.1' in l]
    assert 'ca_file' not in line      # the CA is right: the name is what is wrong


# -- 6. shared storage, the lock and the status directory (issue 17) --------------
# A FUSE mount whose process is stopped hangs every access in the kernel, as a
# glusterfs client of shared storage whose bricks are gone does; one whose
# process was killed is stale (ENOTCONN). Each access is bounded by [lock]
# storage_timeout (1 s here); past it: one line, exit 1, nothing done
# (--check: UNKNOWN). The run or the check must end: subprocess.run's
# timeout fails the test otherwise.

STORAGE_TIMEOUT = {'storage_timeout': '1'}
NO_ANSWER = r'no answer from %s \S+ within 1 seconds \(\[lock\] storage_timeout\)'
STALE = r'%s \S+: Transport endpoint is not connected'

STORAGE_CASES = [
    # (name, what lives on the mount, stop or kill it, --check?, exit, the one line)
    ('the-lock-directory-stops-answering', 'lock', 'stop', False, 1,
     NO_ANSWER % r'the lock directory'),
    ('the-lock-directory-is-stale', 'lock', 'kill', False, 1, STALE % r'\[lock\] lock_dir'),
    ('the-status-directory-stops-answering', 'status', 'stop', False, 1,
     NO_ANSWER % r'\[status\] dir'),
    ('the-status-directory-is-stale', 'status', 'kill', False, 1, STALE % r'\[status\] dir'),
    ('check-while-the-status-directory-stops-answering', 'status', 'stop', True, 3,
     r'^VMBACKUP UNKNOWN - ' + NO_ANSWER % r'\[status\] dir'),
    ('check-while-the-status-directory-is-stale', 'status', 'kill', True, 3,
     r'^VMBACKUP UNKNOWN - ' + STALE % r'\[status\] dir'),
    # --check takes no lock: a hung lock directory is none of its business
    ('check-while-only-the-lock-directory-stops-answering', 'lock', 'stop', True, 3,
     r'^VMBACKUP UNKNOWN - no status file \S+: no run of volume vmstore has finished'),
]


@pytest.mark.parametrize('where, fault, checking, code, line',
                         [pytest.param(*case[1:], id=case[0]) for case in STORAGE_CASES])
def test_shared_storage_that_hangs_or_is_stale_is_one_line_and_nothing_done(
        site, stoppable_mount, where, fault, checking, code, line):
    site.add_vm('web')
    mount = stoppable_mount('shared')
    directories = {'lock': {'lock_dir': str(mount.point)}} if where == 'lock' else {
        'status': {'dir': str(mount.point)}}
    config = site.config(lock=dict(STORAGE_TIMEOUT, **directories.get('lock', {})),
                         **{k: v for k, v in directories.items() if k != 'lock'})
    getattr(mount, fault)()
    args = ('--', MASTER, '--check') if checking else ()
    result = run(site, *args, config=config, timeout=30)
    print(result.output)
    assert result.code == code, result.output
    assert 'Traceback' not in result.output
    if checking:
        (said,) = result.out.splitlines()
    else:
        (said,) = [l for l in result.err.splitlines() if ' ERROR ' in l]
    assert re.search(line, said), (line, said)
    assert site.engine.requests == [] and site.calls() == []


def test_shared_storage_that_stops_answering_during_a_run_ends_it_with_the_snapshots_removed(
        site, stoppable_mount, stop_process):
    """The lock file is open on the mount when it hangs: the run still
    removes its snapshots, says what it could not write, and ends (Python's
    own exit would wait for the hung files)."""
    before = prepare(site)
    mount = stoppable_mount('shared')
    site.behave(schedule_georep={'gate': gate(site)})
    config = site.config(snapshot=FAST, lock=dict(STORAGE_TIMEOUT, lock_dir=str(mount.point)),
                         status={'dir': str(mount.point)})
    live = Live(site, config=config)
    stop_process(live.process)
    when_the_scheduler_runs(site)
    mount.stop()
    open_gate(site)
    result = live.finish(timeout=RUN_LIMIT)
    print(result.output)
    assert result.code == 0, result.output
    assert 'Traceback' not in result.output
    assert site.our_snapshots() == {} and list(site.scratch.iterdir()) == []
    assert [e['severity'] for e in site.engine.events[before.events:]] == ['normal']
    errors = [l for l in result.err.splitlines() if ' ERROR ' in l]
    assert any(re.search(r'the status file of volume vmstore was not written: no answer '
                         r'from \S+vmstore.json within 1 seconds', l) for l in errors), errors
    assert any('the lock file was not updated: no answer from the lock file' in l
               for l in errors), errors


# a status or metrics write that fails must not leave the old files behind:
# --check and the metrics would go on saying OK after a failed run

def full_tmpfs(site, directory):
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', str(directory)],
                   check=True)
    write_old_status(site, directory)
    with open(str(directory / 'filler'), 'wb', buffering=0) as filler:
        with contextlib.suppress(OSError):      # until ENOSPC
            while True:
                filler.write(b'\0' * 4096)


def read_only_bind(site, directory):
    write_old_status(site, directory)
    subprocess.run(['mount', '--bind', str(directory), str(directory)], check=True)
    subprocess.run(['mount', '-o', 'remount,ro,bind', str(directory)], check=True)


def write_old_status(site, directory):
    """The status and the metrics of last night's good run."""
    from test_inputs import status_document
    (directory / ('%s.json' % MASTER)).write_text(json.dumps(status_document()))
    (directory / ('vmbackup_%s.prom' % MASTER)).write_text('vmbackup_last_run_exit_status'
                                                             '{volume="vmstore"} 0.0\n')


STATUS_WRITE_CASES = [
    # (name, how the directory fails, injected error, are the old files gone)
    ('the-status-directory-is-full', full_tmpfs, None, True),
    ('the-status-file-is-refused', write_old_status, 'EACCES', True),
    ('the-status-directory-is-read-only', read_only_bind, None, False),
]


@pytest.mark.parametrize('prepare_directory, injected, removed',
                         [pytest.param(*case[1:], id=case[0]) for case in STATUS_WRITE_CASES])
def test_a_status_write_that_fails_after_a_failed_run_leaves_no_ok_behind(
        site, prepare_directory, injected, removed):
    site.add_vm('web')
    directory = site.tmp / 'monitoring'
    directory.mkdir()
    prepare_directory(site, directory)
    site.behave(schedule_georep={'exit': 1})
    config = site.config(snapshot=FAST, status={'dir': str(directory),
                                                'textfile_dir': str(directory)})
    command = site.command(config=config)
    if injected:
        command = [command[0], str(os.path.join(os.path.dirname(__file__), 'support', 'inject.py')),
                   'write_atomically', injected, '--'] + command[2:]
    process = subprocess.run(command, env=site.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, timeout=RUN_LIMIT)
    result = Result(process.returncode, process.stdout, process.stderr)
    print(result.output)
    assert result.code == 1, result.output
    assert 'Traceback' not in result.output
    assert site.our_snapshots() == {}
    errors = [l for l in result.err.splitlines() if ' ERROR ' in l]
    told = 'the old one was removed' if removed else 'the old one is still there'
    (line,) = [l for l in errors if 'the status file of volume vmstore was not written' in l]
    assert told in line
    metrics = directory / ('vmbackup_%s.prom' % MASTER)
    lines = [l for l in errors if 'the metrics of volume vmstore were not written' in l]
    if lines:
        assert told in lines[0]
    else:       # written in the space the status file left: it tells the failure
        assert 'vmbackup_last_run_exit_status{volume="vmstore"} 1.0' in metrics.read_text()
    assert (directory / ('%s.json' % MASTER)).exists() == (not removed)
    assert metrics.exists() == (not removed or not lines)
    check = run(site, '--', MASTER, '--check', config=config)
    if removed:
        assert check.code == 3 and check.out.startswith('VMBACKUP UNKNOWN - no status file')
    else:   # a read-only file system: nothing can be removed, the error line tells it
        assert 'Read-only file system' in line
