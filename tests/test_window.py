"""Issue 19: the pre-sync ([gluster] presync) and the snapshot window, through
the real script against the fake engine and the fake gluster."""
import calendar
import json
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.site import (MASTER, SLAVE, SLAVEVOL, PASSWORD, assert_invariants,
                          needs_root, wait_for)

pytestmark = needs_root

MiB = 1 << 20


def status_of(site):
    return json.loads((site.status_dir / ('%s.json' % MASTER)).read_text())


def snapshot_posts(engine):
    return [r for r in engine.requests
            if r['method'] == 'POST' and re.fullmatch(r'/vms/[^/]+/snapshots', r['path'])]


def ovf_updates(engine):
    return [r for r in engine.requests
            if r['method'] == 'POST' and r['path'].endswith('/updateovfstore')]


def epoch(iso):
    return calendar.timegm(time.strptime(iso, '%Y-%m-%dT%H:%M:%SZ'))


def gate(site, name):
    return str(site.root / name)


def open_gate(site, name):
    (site.root / name).touch()


def finish(process, timeout=120):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_the_pre_sync_runs_the_scheduler_with_its_own_bound_before_the_ovf_store_and_the_snapshots(
        site, stop_process):
    site.add_vm('web')
    site.add_vm('db')
    site.behave(schedule_georep={'calls': [{'gate': gate(site, 'presync')}, {}]})
    process = site.start('-t', '30', config=site.config(gluster={
        'presync': 'yes', 'presync_timeout': '7'}))
    stop_process(process)
    wait_for(lambda: site.calls('schedule_georep'), message='the pre-sync')
    # the scheduler runs while the VMs are on their bases: no OVF store
    # write asked for yet, no snapshot
    assert ovf_updates(site.engine) == [] and snapshot_posts(site.engine) == []
    open_gate(site, 'presync')
    code, out, err = finish(process)
    assert code == 0, err
    presync, sync = site.calls('schedule_georep')
    assert presync['argv'] == [MASTER, SLAVE, SLAVEVOL, '--interval', '1', '--timeout', '7']
    assert sync['argv'] == [MASTER, SLAVE, SLAVEVOL, '--interval', '1', '--timeout', '30']
    assert len(snapshot_posts(site.engine)) == 2 and len(ovf_updates(site.engine)) == 1
    steps = list(status_of(site)['steps'])
    assert steps.index('check') < steps.index('presync') < steps.index('snapshot') \
        < steps.index('replicate')
    assert re.search(r'summary: time per step: .*presync ', err)
    assert PASSWORD not in out + err


def test_without_presync_the_scheduler_runs_once_and_no_presync_step_is_timed(site):
    site.add_vm('web')
    result = site.run()
    assert result.code == 0, result.output
    assert len(site.calls('schedule_georep')) == 1
    assert 'presync' not in status_of(site)['steps']
    assert 'pre-sync' not in result.output


def test_the_pre_sync_bound_defaults_to_the_run_timeout(site):
    site.add_vm('web')
    result = site.run('-t', '45', config=site.config(gluster={'presync': 'yes'}))
    assert result.code == 0, result.output
    assert [call['argv'][-1] for call in site.calls('schedule_georep')] == ['45', '45']


@pytest.mark.parametrize('behaviour, said', [
    ({'exit': 1}, 'the checkpoint was not reached within --timeout 5 minutes'),
    ({'exit': 255}, 'a gluster command failed'),
    ({'signal': 'SIGKILL'}, 'the scheduler was killed by SIGKILL'),
])
def test_a_failed_pre_sync_is_a_warning_and_the_run_goes_on_as_without_it(
        site, behaviour, said):
    site.add_vm('web')
    site.behave(schedule_georep={'calls': [behaviour, {}]})
    result = site.run(config=site.config(gluster={'presync': 'yes',
                                                  'presync_timeout': '5'}))
    assert result.code == 0, result.output
    assert_invariants(site, result)
    warning = [line for line in result.err.splitlines() if 'pre-sync: ' in line
               and 'going on without it' in line]
    assert len(warning) == 1 and said in warning[0], result.err
    assert 'WARNING' in warning[0] and 'ERROR' not in warning[0]
    assert len(site.calls('schedule_georep')) == 2
    status = status_of(site)
    assert status['succeeded'] and status['failures'] == []
    assert status['totals']['disks_verified'] == 1
    (event,) = site.engine.events
    assert event['severity'] == 'normal'


def test_a_stop_during_the_pre_sync_takes_no_snapshot(site, stop_process):
    site.add_vm('web')
    site.behave(schedule_georep={'gate': gate(site, 'never')})
    process = site.start(config=site.config(gluster={'presync': 'yes'}))
    stop_process(process)
    wait_for(lambda: site.calls('schedule_georep'), message='the pre-sync')
    process.send_signal(signal.SIGTERM)
    code, out, err = finish(process)
    assert code == 1, err
    assert snapshot_posts(site.engine) == [] and ovf_updates(site.engine) == []
    assert len(site.calls('schedule_georep')) == 1
    assert 'Traceback' not in err
    (event,) = site.engine.events
    assert event['severity'] == 'alert'


def test_the_dry_run_shows_the_pre_sync_with_its_bound(site):
    site.add_vm('web')
    result = site.run('--dry-run', '-t', '30', config=site.config(gluster={
        'presync': 'yes', 'presync_timeout': '9'}))
    assert result.code == 0, result.output
    lines = result.out.splitlines()
    presync = [i for i, line in enumerate(lines) if 'pre-sync' in line]
    ovf = [i for i, line in enumerate(lines) if 'OVF store' in line]
    snapshot = [i for i, line in enumerate(lines) if 'VMs to snapshot' in line]
    assert len(presync) == 1 and presync[0] < ovf[0] < snapshot[0], result.out
    assert lines[presync[0]].endswith('%s %s %s --interval 1 --timeout 9'
                                      % (MASTER, SLAVE, SLAVEVOL))
    assert site.calls('schedule_georep') == []
    plain = site.run('--dry-run', config=site.config())
    assert 'pre-sync' not in plain.out


@pytest.mark.parametrize('key, value, said', [
    ('presync', 'maybe', "[gluster] presync = 'maybe' must be yes or no"),
    ('presync_timeout', '-1', '[gluster] presync_timeout = -1 must be 0 or more'),
    ('presync_timeout', 'soon', "[gluster] presync_timeout = 'soon' is not a whole number"),
])
def test_a_bad_presync_key_is_refused_before_the_engine(site, key, value, said):
    result = site.run(config=site.config(gluster={key: value}))
    assert result.code == 2, result.output
    assert said in result.err
    assert site.engine.requests == []


def test_the_window_and_the_overlays_at_merge_reach_the_status_the_metrics_and_the_summary(
        site, stop_process, tmp_path):
    site.add_vm('web', disks=2)
    site.add_vm('db')
    textfiles = tmp_path / 'textfiles'
    textfiles.mkdir()
    site.behave(schedule_georep={'gate': gate(site, 'sync')})
    process = site.start(config=site.config(status={
        'dir': str(site.status_dir), 'textfile_dir': str(textfiles)}))
    stop_process(process)
    (called,) = wait_for(lambda: site.calls('schedule_georep'), message='the sync')
    # the "guests" write into their overlays during the window
    written = {}
    for overlay in site.engine.overlays:
        path = site.engine.disk_path(overlay['disk_id'], overlay['overlay'])
        size = os.path.getsize(path) + (len(written) + 1) * MiB
        os.truncate(path, size)
        written[overlay['overlay']] = size
    opened = time.time()
    open_gate(site, 'sync')
    code, out, err = finish(process)
    assert code == 0, err

    status = status_of(site)
    window = status['snapshot_window']
    assert window['overlay_bytes'] == sum(written.values())
    disks = {disk['overlay']: disk['overlay_bytes']
             for vm in status['vms'] for disk in vm['disks']}
    assert disks == written
    # the window spans the sync: the snapshots were ok before the scheduler
    # started, the merges sent after the gate opened
    assert window['seconds'] >= opened - called['time']
    assert epoch(window['first_snapshot_ok']) <= called['time']
    assert epoch(window['first_removal_sent']) >= int(opened)

    families = {family.name: family for family in text_string_to_metric_families(
        (textfiles / ('vmbackup_%s.prom' % MASTER)).read_text())}
    (seconds,) = families['vmbackup_snapshot_window_seconds'].samples
    (overlays,) = families['vmbackup_overlay_bytes'].samples
    assert seconds.labels == overlays.labels == {'volume': MASTER}
    assert seconds.value == window['seconds']
    assert overlays.value == sum(written.values())
    assert re.search(r'summary: snapshot window \d+ s \(first snapshot ok to first '
                     r'removal sent\); the overlays held 6\.\d MiB when the merges '
                     r'were sent', err), err


def test_a_run_whose_sync_fails_still_measures_the_window_up_to_its_removals(site):
    site.add_vm('web')
    site.behave(schedule_georep={'exit': 1})
    result = site.run()
    assert result.code == 1, result.output
    window = status_of(site)['snapshot_window']
    assert window['seconds'] >= 0 and window['overlay_bytes'] > 0
    (disk,) = status_of(site)['vms'][0]['disks']
    assert disk['overlay_bytes'] == window['overlay_bytes']


def test_verify_runs_qemu_img_on_several_images_at_once_but_no_more_than_the_cpus(site):
    for number in range(6):
        site.add_vm('vm%d' % number, format='cow')
    result = site.run(config=site.config(verify={
        'qemu_img': str(pathlib.Path(__file__).parent / 'fakebin' / 'counting-qemu-img')}))
    assert result.code == 0, result.output
    assert 'verify: 6 disks of 6 VMs verified restorable' in result.err
    running = most = 0
    calls = site.calls('qemu-img')
    assert len(calls) == 2 * 2 * 6       # info and check of each disk, begun and ended
    for call in calls:
        running += 1 if call['phase'] == 'start' else -1
        most = max(most, running)
    assert 2 <= most <= os.cpu_count()
