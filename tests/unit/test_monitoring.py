"""The status file, the metrics, the ping and --check, as pure functions."""
import json
import os
import types

import pytest
from prometheus_client.parser import text_string_to_metric_families

import vmbackup
from vmbackup import DiskRecord, Plan, Run, Settings, VmBackup

DAY = 86400.0
NOW = 1800000000.0


class EndedRun(Run):
    """A Run whose exit status the test gives (a Run derives it from its
    failures: exit_status_of)."""
    exit_status = None


def make_run(exit_status=0, failures=(), backups=(), steps=(), started=NOW - 600,
             ended=NOW):
    args = types.SimpleNamespace(mastervol='vmstore', slave='root@dr.example.com',
                                 slavevol='vmstore-dr', vm=[], exclude=[])
    run = EndedRun(args, Settings(status_dir='/nonexistent'), stop=None)
    run.started_at, run.ended_at = started, ended
    run.exit_status = exit_status
    run.failures = list(failures)
    run.plan = Plan(backups=list(backups))
    for name, seconds in steps:
        run.step_seconds[name] = seconds
    return run


def good_disk(name, size=1 << 30, verified=True):
    return DiskRecord(disk_id='id-' + name, name=name, sd_id='sd', base_id='b',
                      overlay_id='o', size=size, confirmed=True,
                      overlay_dropped=True, chain_repaired=True, verified=verified)


def good_vm(name, *disks):
    return VmBackup(vm_id='vm-' + name, name=name, disks=list(disks),
                    snapshot_id='snap-' + name, snapshot_ready=True,
                    consistency=vmbackup.QUIESCED, snapshot_removed=True)


@pytest.mark.parametrize('fields, outcome', [
    (dict(confirmed=True, overlay_dropped=True, chain_repaired=True, verified=True),
     'verified'),
    (dict(confirmed=True, overlay_dropped=True, chain_repaired=True), 'backed up'),
    (dict(confirmed=True, chain_repaired=True), 'backed up'),   # no overlay to drop
    (dict(confirmed=True, overlay_dropped=True, chain_repaired=True, verified=False),
     'not backed up'),
    (dict(confirmed=True, overlay_dropped=False, chain_repaired=True), 'not backed up'),
    (dict(confirmed=True, overlay_dropped=True), 'not backed up'),
    (dict(confirmed=False), 'not backed up'),
    (dict(), 'not backed up'),
    (dict(confirmed=True, overlay_dropped=True, chain_repaired=True, verified=True,
          problem='the slave copy is older'), 'not backed up'),
])
def test_a_disk_counts_as_backed_up_only_when_confirmed_and_repaired(fields, outcome):
    assert vmbackup.disk_outcome(DiskRecord(**fields)) == outcome


def test_a_vm_without_a_ready_snapshot_or_with_one_bad_disk_is_not_backed_up():
    assert vmbackup.vm_outcome(good_vm('a', good_disk('a1'))) == 'backed up'
    unready = good_vm('b', good_disk('b1'))
    unready.snapshot_ready = False
    assert vmbackup.vm_outcome(unready) == 'no snapshot'
    assert vmbackup.vm_outcome(good_vm('c', good_disk('c1'), DiskRecord())) == \
        'not backed up'


def test_a_successful_run_becomes_the_last_success_and_counts_what_it_did():
    run = make_run(backups=[good_vm('web', good_disk('w1'), good_disk('w2', verified=None)),
                            good_vm('db', good_disk('d1', size=1000))],
                   steps=[('snapshot', 2.5), ('replicate', 30.0)])
    previous = {'last_success': {'ended_at': NOW - DAY}}
    document = vmbackup.status_document(run, previous, 'gluster1')
    assert document['version'] == vmbackup.STATUS_VERSION
    assert document['succeeded'] is True
    assert document['last_success']['ended_at'] == NOW
    assert document['last_success']['node'] == 'gluster1'
    assert document['last_success']['duration_seconds'] == 600
    assert dict(document['totals']) == {
        'vms': 2, 'vms_backed_up': 2, 'disks': 3, 'disks_backed_up': 3,
        'disks_verified': 2, 'bytes_backed_up': 2 * (1 << 30) + 1000,
        'bytes_verified': (1 << 30) + 1000, 'snapshots_left': 0}
    assert list(document['steps']) == ['snapshot', 'replicate']
    assert document['ended'] == '2027-01-15T08:00:00Z'
    web = document['vms'][0]
    assert web['consistency'] == 'quiesced'
    assert [disk['outcome'] for disk in web['disks']] == ['verified', 'backed up']
    # what the file holds survives JSON and is read back as a status file
    assert vmbackup.check_document(json.loads(json.dumps(document))) is None


def test_a_failed_run_keeps_the_previous_last_success():
    stuck = good_vm('stuck', DiskRecord(disk_id='s1'))
    stuck.snapshot_ready, stuck.snapshot_removed = False, False
    run = make_run(exit_status=1, failures=['VM stuck: the snapshot was not ready'],
                   backups=[stuck])
    previous = {'last_success': {'ended_at': NOW - DAY, 'node': 'gluster2'}}
    document = vmbackup.status_document(run, previous, 'gluster1')
    assert document['succeeded'] is False
    assert document['last_success'] == previous['last_success']
    assert document['totals']['snapshots_left'] == 1
    assert document['vms'][0]['outcome'] == 'no snapshot'
    assert vmbackup.status_document(run, None, 'gluster1')['last_success'] is None


def test_a_run_that_chose_no_vm_has_an_empty_list_not_a_missing_one():
    run = make_run(exit_status=1, failures=['cannot reach the engine'])
    run.plan = None
    document = vmbackup.status_document(run, None, 'n')
    assert document['vms'] == [] and document['totals']['vms'] == 0
    assert vmbackup.check_document(json.loads(json.dumps(document))) is None


@pytest.mark.parametrize('content, problem', [
    ('{"version": 1', 'is not JSON'),
    ('[]', 'not a JSON object'),
    ('{}', 'no version'),
    ('{"version": 99}', 'written by a newer vmbackup'),
    ('{"version": 1, "started_at": 1, "ended_at": "yesterday", "duration_seconds": 1}',
     'ended_at is not a time'),
    (b'\xff\xfe', 'is not JSON'),
])
def test_a_garbled_status_file_is_named_not_trusted(tmp_path, content, problem):
    path = tmp_path / 'vmstore.json'
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    document, why = vmbackup.read_status(str(path))
    assert document is None
    assert problem in why and str(path) in why


def test_no_status_file_is_no_document_and_no_problem(tmp_path):
    assert vmbackup.read_status(str(tmp_path / 'none.json')) == (None, None)


def test_an_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / 'vmstore.json'
    path.write_text('old')
    vmbackup.write_atomically(str(path), 'new\n')
    assert path.read_text() == 'new\n'
    assert os.listdir(str(tmp_path)) == ['vmstore.json']
    assert path.stat().st_mode & 0o777 == 0o644


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / 'vmstore.json'
    path.mkdir()      # a directory in the way: the rename fails
    with pytest.raises(OSError):
        vmbackup.write_atomically(str(path), 'new\n')
    assert os.listdir(str(tmp_path)) == ['vmstore.json']


def families(text):
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_the_metrics_parse_as_prometheus_gauges_labelled_by_volume():
    run = make_run(backups=[good_vm('web', good_disk('w1'), good_disk('w2', verified=None))],
                   steps=[('snapshot', 2.5)])
    text = vmbackup.metrics_text(vmbackup.status_document(run, None, 'gluster1'))
    found = families(text)
    expected = {
        'vmbackup_last_run_timestamp_seconds': NOW,
        'vmbackup_last_success_timestamp_seconds': NOW,
        'vmbackup_last_run_duration_seconds': 600,
        'vmbackup_last_run_exit_status': 0,
        'vmbackup_last_run_failures': 0,
        'vmbackup_last_run_vms': 1,
        'vmbackup_last_run_vms_backed_up': 1,
        'vmbackup_last_run_disks': 2,
        'vmbackup_last_run_disks_backed_up': 2,
        'vmbackup_last_run_disks_verified': 1,
        'vmbackup_last_run_backed_up_bytes': 2 << 30,
        'vmbackup_last_run_verified_bytes': 1 << 30,
        'vmbackup_last_run_snapshots_left': 0,
    }
    for name, value in expected.items():
        (sample,) = found[name].samples
        assert found[name].type == 'gauge', name
        assert found[name].documentation, name
        assert sample.labels == {'volume': 'vmstore'}, name
        assert sample.value == value, name
    (step,) = found['vmbackup_last_run_step_duration_seconds'].samples
    assert step.labels == {'volume': 'vmstore', 'step': 'snapshot'} and step.value == 2.5
    (info,) = found['vmbackup_last_run_info'].samples
    assert info.labels['node'] == 'gluster1'
    assert text.count('# TYPE ') == text.count('# HELP ') == len(found)


def test_without_a_known_success_the_last_success_metric_is_zero():
    run = make_run(exit_status=1, failures=['x'])
    found = families(vmbackup.metrics_text(vmbackup.status_document(run, None, 'n')))
    assert found['vmbackup_last_success_timestamp_seconds'].samples[0].value == 0
    assert found['vmbackup_last_run_exit_status'].samples[0].value == 1


def test_label_values_are_escaped():
    assert vmbackup.metric_labels([('a', 'x"y\\z\n')]) == '{a="x\\"y\\\\z\\n"}'


def document_with(exit_status=0, success_age=None, failures=()):
    run = make_run(exit_status=exit_status, failures=failures,
                   backups=[good_vm('web', good_disk('w1'))])
    previous = ({'last_success': {'ended_at': NOW - success_age}}
                if success_age is not None else None)
    document = json.loads(json.dumps(vmbackup.status_document(run, previous, 'g1')))
    if exit_status == 0 and success_age is not None:
        document['last_success']['ended_at'] = NOW - success_age
    return document


@pytest.mark.parametrize('document, state, words', [
    (document_with(success_age=3600), 0, 'last success 60.0 minutes ago'),
    (document_with(success_age=26 * 3600), 1, 'older than 25 hours'),
    (document_with(success_age=50 * 3600), 2, 'older than 49 hours'),
    (document_with(exit_status=1, success_age=3600, failures=['VM db: x', 'y']), 2,
     'FAILED: VM db: x (and 1 more)'),
    (document_with(exit_status=1), 2, 'no successful run known'),
], ids=['fresh', 'stale', 'too old', 'last run failed', 'never succeeded'])
def test_the_check_state_follows_the_age_of_the_last_success_and_the_last_run(
        document, state, words):
    got, text, perfdata = vmbackup.check_state(document, None, NOW, 25, 49)
    assert got == state
    assert words in text
    line = vmbackup.check_line(got, text, perfdata)
    assert line.startswith('VMBACKUP %s - ' % vmbackup.CHECK_STATES[state])
    assert line.count('|') == 1 and '\n' not in line


def test_the_perfdata_follows_the_plugin_guidelines():
    document = document_with(success_age=3600)
    _, _, perfdata = vmbackup.check_state(document, None, NOW, 25, 49)
    assert perfdata.split() == ['age=3600s;90000;176400;0', 'duration=600s;;;0',
                                'vms=1;;;0', 'disks=1;;;0', 'failures=0;;;0']
    _, _, perfdata = vmbackup.check_state(document_with(exit_status=1), None,
                                          NOW, 25, 49)
    assert perfdata.startswith('age=U;')


def test_no_document_is_unknown_with_the_reason():
    state, text, perfdata = vmbackup.check_state(None, 'no status file /x.json',
                                                 NOW, 25, 49)
    assert (state, perfdata) == (3, '')
    assert vmbackup.check_line(state, text, perfdata) == \
        'VMBACKUP UNKNOWN - no status file /x.json'


def test_a_pipe_in_a_failure_cannot_start_the_perfdata_early():
    document = document_with(exit_status=1, failures=['output a|b'])
    line = vmbackup.check_line(*vmbackup.check_state(document, None, NOW, 25, 49))
    assert line.count('|') == 1


@pytest.mark.parametrize('url, kind, target', [
    ('https://hc-ping.com/0b4b-uuid', 'start', 'https://hc-ping.com/0b4b-uuid/start'),
    ('https://hc-ping.com/0b4b-uuid/', 'success', 'https://hc-ping.com/0b4b-uuid/'),
    ('https://hc-ping.com/0b4b-uuid', 'fail', 'https://hc-ping.com/0b4b-uuid/fail'),
    ('https://hc-ping.com/key/vmstore?create=1', 'fail',
     'https://hc-ping.com/key/vmstore/fail?create=1'),
])
def test_pings_follow_the_healthchecks_convention(url, kind, target):
    assert vmbackup.ping_target(url, kind) == target


def test_only_scheme_and_host_of_the_ping_url_may_be_logged():
    assert vmbackup.ping_host('https://user:pw@hc.example.com:8000/secret-uuid?x=1') \
        == 'https://hc.example.com'


def test_the_summary_names_outcomes_steps_and_where_the_status_is():
    stuck = good_vm('stuck', DiskRecord(disk_id='s1', name='stuck_disk',
                                        problem='not confirmed at the slave'))
    run = make_run(exit_status=1, failures=['VM stuck: not confirmed'],
                   backups=[good_vm('web', good_disk('w1')), stuck],
                   steps=[('snapshot', 2.0), ('replicate', 125.0)])
    document = vmbackup.status_document(run, None, 'gluster1')
    lines = vmbackup.summary_lines(document, 'written to /s/vmstore.json')
    text = '\n'.join(lines)
    assert 'FAILED' in lines[0]
    assert '2 VMs: 1 backed up, 1 not backed up' in text
    assert '2 disks: 1 verified, 1 not backed up; 1.0 GiB backed up' in text
    assert 'VM stuck: not backed up; disk stuck_disk: not confirmed at the slave' in text
    assert 'time per step: snapshot 2 s, replicate 2.1 minutes' in text
    assert lines[-1] == 'summary: status: written to /s/vmstore.json'
    paragraph = vmbackup.ping_paragraph(document, 'written to /s/vmstore.json')
    assert '\n' not in paragraph and 'Failures: VM stuck: not confirmed.' in paragraph


def test_the_status_report_shows_each_vm_and_disk_and_the_last_success():
    document = document_with(exit_status=1, success_age=DAY, failures=['VM db: x'])
    lines = vmbackup.status_report(document, '/s/vmstore.json', NOW)
    text = '\n'.join(lines)
    assert 'Volume vmstore: the last run FAILED (exit status 1).' == lines[0]
    assert 'failed: VM db: x' in text
    assert 'last success: ' in text and '24.0 hours ago' in text
    assert 'VM web: backed up, quiesced' in text
    assert 'disk w1: verified (confirmed, overlay dropped, chain repaired, verified)' \
        in text
    assert lines[-1] == '  (from /s/vmstore.json)'
