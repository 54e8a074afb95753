"""Fixtures: a fake engine on HTTPS with a CA made per session, a fake site
(support/site.py) in a temporary directory, FUSE mounts that stop answering,
and the processes a test started, killed at its end. The helpers the tests
import are in support/, not here."""
import pathlib
import signal
import subprocess
import sys

import pytest
import trustme

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))               # support
sys.path.insert(1, str(HERE.parent))      # vmbackup, for tests/unit
# the helpers' asserts (assert_invariants) say what they found, as a test's do
pytest.register_assert_rewrite('support')

from support.fake_engine import FakeEngine  # noqa: E402
from support.site import PASSWORD, USER, Site, mounts_under  # noqa: E402
from support.stoppable_mount import StoppableMount, fuse_problem  # noqa: E402


@pytest.fixture
def stoppable_mount(tmp_path):
    """Make StoppableMounts below tmp_path (skip where the machine can't);
    let them go on and unmount them at the end, whatever happened."""
    problem = fuse_problem()
    if problem:
        pytest.skip(problem)
    made = []

    def make(name):
        mount = StoppableMount(tmp_path / ('%s-source' % name), tmp_path / name)
        made.append(mount)
        return mount

    try:
        yield make
    finally:
        for mount in made:
            mount.close()


# the time the real-gluster tests take (set-up, call and tear-down), summed
# from their reports, which xdist hands to the controller too
_gluster_reports = []


def pytest_runtest_logreport(report):
    if 'gluster' in report.keywords:
        _gluster_reports.append(report)


def pytest_terminal_summary(terminalreporter):
    if not _gluster_reports:
        return
    calls = [r for r in _gluster_reports if r.when == 'call']
    outcomes = {}
    for report in _gluster_reports:
        if report.when == 'call' or report.outcome != 'passed':
            outcomes[report.nodeid] = report.outcome
    counts = ', '.join('%d %s' % (list(outcomes.values()).count(outcome), outcome)
                       for outcome in sorted(set(outcomes.values())))
    terminalreporter.write_line(
        'real-gluster tests: %s; they took %.0f s (%.0f s in the tests, the rest '
        'in the lab set-up and tear-down)' % (
            counts, sum(r.duration for r in _gluster_reports),
            sum(r.duration for r in calls)))


@pytest.fixture(scope='session')
def ca():
    return trustme.CA()


@pytest.fixture
def engine(ca):
    with FakeEngine(ca=ca, user=USER, password=PASSWORD, snapshot_delay=0.3,
                    merge_delay=0.3) as engine:
        yield engine


@pytest.fixture
def site(tmp_path, engine):
    site = Site(tmp_path, engine)
    try:
        yield site
    finally:
        for point in reversed(mounts_under(tmp_path)):
            subprocess.run(['umount', '-l', point], check=False)


@pytest.fixture
def stop_process():
    """Kill, at the end of the test, the processes a test started."""
    started = []
    yield started.append
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
