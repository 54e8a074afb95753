"""SIGTERM and SIGINT: the run stops, and still removes its snapshots."""
import signal

import pytest

from conftest import Result, alive, assert_invariants, needs_root, wait_for

pytestmark = needs_root


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_scheduler_stops_it_and_removes_the_snapshots(
        site, stop_process, signum):
    site.add_vm('web')
    site.add_vm('db')
    site.behave(schedule_georep={'hang': True})
    process = site.start()
    stop_process(process)
    (call,) = wait_for(lambda: site.calls('schedule_georep'), message='the scheduler')
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    result = Result(process.returncode, out, err)
    assert result.code == 1, result.output
    assert_invariants(site, result)
    wait_for(lambda: not alive(call['pid']), timeout=10, message='the scheduler to end')
    name = signal.Signals(signum).name
    assert 'interrupted by %s' % name in site.engine.events[-1]['description']
    assert site.engine.events[-1]['severity'] == 'alert'
    assert site.mounts() == []


def test_a_signal_while_waiting_for_the_snapshots_removes_them_once_they_are_ready(site, stop_process):
    site.engine.snapshot_delay = 2.0
    site.add_vm('web')
    process = site.start()
    stop_process(process)
    wait_for(lambda: any(r['method'] == 'POST' and r['path'].endswith('/snapshots')
                         for r in site.engine.requests), message='the snapshot request')
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    result = Result(process.returncode, out, err)
    assert result.code == 1, result.output
    assert_invariants(site, result)
    # the master's read-only mount, and its unmount
    assert [c['program'] for c in site.calls_but_preflight()] == ['glusterfs', 'umount']
