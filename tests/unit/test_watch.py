"""Watch: which VMs a wait looks at, check by check, from what the feed of
events names, the pages of the VM list, the looks that failed and the
safety net; on a clock of the test's own."""
import pytest

import vmbackup
from vmbackup import Plan, Watch


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Feed:
    """What Watch asks of a feed: the VMs named since the last check (None:
    it can't tell) and the engine's running jobs (None: unknown)."""
    what = 'the events'

    def __init__(self):
        self.names = []
        self.jobs = None

    def changes(self):
        return self.names

    def running_jobs(self):
        return self.jobs


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(vmbackup.time, 'monotonic', clock)
    return clock


def plan(*pages):
    """A Plan whose running VMs fill pages of LOOK_PAGE_SIZE: pages[n] are the
    VMs at the start of page n + 1."""
    positions = {}
    for number, vm_ids in enumerate(pages):
        for offset, vm_id in enumerate(vm_ids):
            positions[vm_id] = number * vmbackup.LOOK_PAGE_SIZE + offset
    return Plan(vm_positions=positions)


def test_without_a_feed_every_vm_awaited_is_looked_at(clock):
    watch = Watch(None, clock.now + 600, plan(), hold=10)
    assert watch.to_look_at({'a': 1, 'b': 1}) == {'a', 'b'}


def test_when_the_feed_cannot_tell_every_vm_is_looked_at(clock):
    feed = Feed()
    feed.names = None
    watch = Watch(feed, clock.now + 600, plan(['a', 'b']), hold=10)
    assert watch.to_look_at({'a': 1, 'b': 1}) == {'a', 'b'}
    assert not watch.busy


def test_past_the_deadline_every_vm_is_looked_at(clock):
    feed = Feed()
    watch = Watch(feed, clock.now + 60, plan(['a', 'b']), hold=10)
    clock.now += 61
    assert watch.to_look_at({'a': 1, 'b': 1}) == {'a', 'b'}


def test_a_page_is_looked_at_once_all_its_vms_awaited_are_named(clock):
    feed = Feed()
    watch = Watch(feed, clock.now + 6000, plan(['a', 'b'], ['c']), hold=10)
    awaited = {'a': 1, 'b': 1, 'c': 1}
    feed.names = ['a', 'stranger']
    assert watch.to_look_at(awaited) == set() and watch.busy
    feed.names = ['b']
    assert watch.to_look_at(awaited) == {'a', 'b'}
    feed.names = []
    assert watch.to_look_at(awaited) == set() and not watch.busy


def test_a_named_vm_is_looked_at_once_it_has_waited_hold_seconds(clock):
    feed = Feed()
    watch = Watch(feed, clock.now + 6000, plan(['a', 'b']), hold=10)
    awaited = {'a': 1, 'b': 1}
    feed.names = ['a']
    assert watch.to_look_at(awaited) == set()
    feed.names = []
    clock.now += 9
    assert watch.to_look_at(awaited) == set()
    clock.now += 1
    assert watch.to_look_at(awaited) == {'a'}
    assert watch.to_look_at(awaited) == set()       # looked at: no longer named


def test_a_vm_not_on_the_list_of_running_vms_is_a_page_of_its_own(clock):
    feed = Feed()
    watch = Watch(feed, clock.now + 6000, plan(['a']), hold=10)
    feed.names = ['new']
    assert watch.to_look_at({'a': 1, 'new': 1}) == {'new'}


def test_a_vm_whose_last_look_failed_is_looked_at_again(clock):
    feed = Feed()
    watch = Watch(feed, clock.now + 6000, plan(['a', 'b']), hold=10)
    watch.retry = {'b', 'gone'}
    assert watch.to_look_at({'a': 1, 'b': 1}) == {'b'}


def test_a_vm_no_longer_awaited_is_forgotten(clock):
    feed = Feed()
    watch = Watch(feed, clock.now + 6000, plan(['a', 'b']), hold=10)
    feed.names = ['a']
    watch.to_look_at({'a': 1, 'b': 1})
    feed.names = []
    assert watch.to_look_at({'b': 1}) == set() and watch.named == {}


def test_the_safety_net_looks_at_every_vm_when_fewer_jobs_run_than_awaited(clock):
    feed = Feed()
    watch = Watch(feed, clock.now + 6000, plan(['a', 'b']), hold=10)
    awaited = {'a': 2, 'b': 1}
    clock.now += vmbackup.NET_FIRST
    feed.jobs = 2
    assert watch.to_look_at(awaited) == {'a', 'b'}
    assert watch.net_every == 2 * vmbackup.NET_FIRST
    clock.now += 2 * vmbackup.NET_FIRST
    feed.jobs = 3                   # every action awaited has its job: skipped
    assert watch.to_look_at(awaited) == set()
    clock.now += 4 * vmbackup.NET_FIRST
    feed.jobs = None                # unknown: looked at
    assert watch.to_look_at(awaited) == {'a', 'b'}


def test_the_safety_net_grows_to_net_last_and_is_a_quarter_of_a_short_wait(clock):
    feed = Feed()
    watch = Watch(feed, clock.now + 40, plan(), hold=10)
    assert watch.net_every == 10
    watch = Watch(feed, clock.now + 100000, plan(), hold=10)
    feed.jobs = 0
    for _ in range(10):
        clock.now = watch.net_due
        watch.to_look_at({})
    assert watch.net_every == vmbackup.NET_LAST


def test_the_safety_net_counts_only_the_vms_it_would_not_look_at_anyway(clock):
    feed = Feed()
    watch = Watch(feed, clock.now + 6000, plan(['a'], ['b']), hold=10)
    clock.now += vmbackup.NET_FIRST
    feed.names = ['a']
    feed.jobs = 1                   # b's one job: a is looked at for its name
    assert watch.to_look_at({'a': 5, 'b': 1}) == {'a'}
