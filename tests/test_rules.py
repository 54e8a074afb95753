"""The alerting rules that ship (dist/vmbackup.rules.yml), checked with the
real `promtool check rules` and `promtool test rules` (Debian's prometheus
package, installed when missing) on series made from metrics files that the
real vmbackup.py wrote against the fake engine: a good run, a failed one,
a good one again, and the first run of a volume, failed.

promtool's clock starts at 0, so every timestamp of the files is moved by
the same amount (origin()): an age, time() - timestamp, stays what it was.
node_exporter's textfile collector adds node_textfile_mtime_seconds{file}
for each file it read, the file's mtime in whole seconds, `file` its path
(node_exporter collector/textfile.go, exportMTimes; the bare file name
before 1.3.0): the tests take it from the file's own mtime."""
import json
import os
import re
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import georep
from support.fake_engine import FakeEngine
from support.site import MASTER, PASSWORD, USER, VMBACKUP, Site, mounts_under, needs_root
from test_packaging import DIST

RULES = DIST / 'vmbackup.rules.yml'
ALERTS = ('VmbackupNoRecentSuccess', 'VmbackupLastRunFailed',
          'VmbackupRestorePointTooOld', 'VmbackupMetricsStale',
          'VmbackupMetricsGone')
HOUR = 3600
SCRAPE = 300            # seconds between two samples of a series
TEXTFILE_DIR = '/var/lib/node_exporter/textfile_collector'


def promtool(*args):
    if not shutil.which('promtool'):
        install_promtool()
    return subprocess.run(['promtool'] + [str(arg) for arg in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)


def install_promtool():
    """Install Debian's prometheus package (promtool) as the lab installs
    its packages: no service started while apt-get runs, and the prometheus
    service that the package enables disabled again, so that nothing the
    tests installed starts at boot."""
    if not shutil.which('apt-get'):
        pytest.fail('promtool is missing and there is no apt-get to install '
                    'prometheus')
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    lock = ['-o', 'DPkg::Lock::Timeout=600']
    install = ['apt-get'] + lock + ['install', '-y', '-q',
                                    '--no-install-recommends', 'prometheus']
    with georep.services_not_started(print):
        process = command(install, env)
        if process.returncode != 0:       # a new machine has no package lists
            command(['apt-get'] + lock + ['update', '-qq'], env)
            process = command(install, env)
    assert process.returncode == 0 and shutil.which('promtool'), \
        'apt-get install prometheus: %s' % process.stderr[-2000:]
    if shutil.which('update-rc.d'):
        command(['update-rc.d', 'prometheus', 'disable'], env)
    if shutil.which('deb-systemd-helper'):    # it acts only for a maintainer script
        command(['deb-systemd-helper', 'disable', 'prometheus.service'],
                dict(env, DPKG_MAINTSCRIPT_PACKAGE='prometheus',
                     DPKG_MAINTSCRIPT_NAME='postinst'))


def command(argv, env):
    return subprocess.run(argv, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=900)


def samples_of(text):
    """Given a .prom file's text, return [(name, {label: value}, value)]."""
    return [(sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples]


class Written:
    """A metrics file as one run of vmbackup.py left it."""

    def __init__(self, path):
        self.samples = samples_of(path.read_text())
        self.mtime = int(os.stat(str(path)).st_mtime)   # whole seconds, as node_exporter
        self.ended = self.value('vmbackup_last_run_timestamp_seconds')

    def value(self, name):
        return [value for sample, _, value in self.samples if sample == name][0]


@pytest.fixture(scope='module')
def runs(tmp_path_factory, ca):
    """Runs of the real tool on one VM, [status] textfile_dir set: good,
    failed (the scheduler's timeout), good; then, the status file removed
    (a new volume), a failed one. Return their metrics files."""
    tmp = tmp_path_factory.mktemp('rules')
    with FakeEngine(ca=ca, user=USER, password=PASSWORD, snapshot_delay=0.1,
                    merge_delay=0.1) as engine:
        site = Site(tmp, engine)
        try:
            site.add_vm('web')
            textfiles = tmp / 'textfiles'
            textfiles.mkdir()
            sections = {'status': {'dir': str(site.status_dir),
                                   'textfile_dir': str(textfiles)}}
            if knows_restore_points():
                sections['restore_points'] = {'keep': '1'}
            config = site.config(**sections)
            written = []
            for schedule_georep, code in (({}, 0), ({'exit': 1}, 1), ({}, 0),
                                          ({'exit': 1}, 1)):
                if len(written) == 3:
                    (site.status_dir / ('%s.json' % MASTER)).unlink()
                site.behave(schedule_georep=schedule_georep)
                result = site.run('-t', '5', config=config)
                assert result.code == code, result.output
                written.append(Written(textfiles / ('vmbackup_%s.prom' % MASTER)))
        finally:
            for point in reversed(mounts_under(tmp)):
                subprocess.run(['umount', '-l', point], check=False)
    good, failed, _, first_failed = written
    assert failed.value('vmbackup_last_run_exit_status') == 1
    assert failed.value('vmbackup_last_success_timestamp_seconds') == good.ended
    assert first_failed.value('vmbackup_last_success_timestamp_seconds') == 0
    return written


def knows_restore_points():
    """Tell whether this vmbackup.py has [restore_points] (issue 16)."""
    return re.search(r"^ +'restore_points': \{", VMBACKUP.read_text(), re.M) is not None


def origin(runs):
    """promtool's time 0: an hour before the first run ended."""
    return int(runs[0].ended) - HOUR


def restore_point_samples(written, newest_restore_point):
    """The restore point metrics (vmbackup_restore_point_timestamp_seconds,
    vmbackup_restore_points) where the file has none: until vmbackup.py has
    [restore_points], written here as the file will carry them (the newest
    one taken at the end of the newest good run, one kept; 0 and none when
    no run succeeded)."""
    names = {name for name, _, _ in written.samples}
    if 'vmbackup_restore_point_timestamp_seconds' in names:
        return []
    assert not knows_restore_points(), 'keep = 1 wrote no restore point metrics'
    volume = {'volume': MASTER}
    return [('vmbackup_restore_point_timestamp_seconds', volume, newest_restore_point),
            ('vmbackup_restore_points', volume, 1.0 if newest_restore_point else 0.0)]


def scraped(written, zero, instance, file_label, newest_restore_point):
    """Given a metrics file, return {series: value} as Prometheus would store
    it from node_exporter on instance, timestamps moved by -zero."""
    series = {}
    samples = written.samples + restore_point_samples(written, newest_restore_point)
    samples.append(('node_textfile_mtime_seconds', {'file': file_label},
                    written.mtime))
    for name, labels, value in samples:
        if name.endswith(('_timestamp_seconds', '_mtime_seconds')):
            value -= zero       # 0 (none known) too: its age stays what it was
        labels = dict(labels, instance=instance, job='node')
        series[series_name(name, labels)] = value
    return series


def series_name(name, labels):
    return '%s{%s}' % (name, ','.join(
        '%s="%s"' % (key, str(value).replace('\\', '\\\\').replace('"', '\\"'))
        for key, value in sorted(labels.items())))


def input_series(timelines, end):
    """Given {instance: [(from, {series: value} or None)]} (times in promtool's
    seconds, None: the file is gone) and the last time, return promtool's
    input_series, one sample every SCRAPE seconds from 0 to end."""
    steps = range(0, end + SCRAPE, SCRAPE)
    values = {}
    for events in timelines.values():
        names = {name for _, state in events if state for name in state}
        for name in names:
            column = []
            for step in steps:
                now = [state for start, state in events if start <= step]
                state = now[-1] if now else None
                column.append(state.get(name) if state else None)
            values[name] = column
    return [{'series': name, 'values': notation(column)}
            for name, column in sorted(values.items())]


def notation(column):
    """Given values (None: no sample), return promtool's expanding notation:
    'a+0xn' for a run of n + 1 equal values, '_xn' for n + 1 missing."""
    parts, index = [], 0
    while index < len(column):
        value, run = column[index], 1
        while index + run < len(column) and column[index + run] == value:
            run += 1
        head = '_' if value is None else repr(float(value))
        parts.append('%sx%d' % (head, run - 1) if value is None
                     else '%s+0x%d' % (head, run - 1))
        index += run
    return ' '.join(parts)


def rules_text():
    return RULES.read_text()


def expected(alert):
    """The labels and annotations alert has for volume MASTER, read from the
    rules file (each on one line, single-quoted)."""
    labels, annotations, current = {}, {}, None
    for line in rules_text().splitlines():
        name = re.match(r'\s*- alert: (\w+)$', line)
        if name:
            current = name.group(1)
        if current != alert:
            continue
        severity = re.match(r'\s*severity: (\w+)$', line)
        if severity:
            labels['severity'] = severity.group(1)
        text = re.match(r"\s*(summary|description): '([^']*)'$", line)
        if text:
            annotations[text.group(1)] = text.group(2).replace(
                '{{ $labels.volume }}', MASTER)
    assert labels and set(annotations) == {'summary', 'description'}, alert
    return {'exp_labels': dict(labels, volume=MASTER),
            'exp_annotations': annotations}


def promtool_test(tmp_path, timelines, end, checks):
    """Run promtool test rules: checks is [(time, alerts that fire then)];
    every alert of ALERTS not named must not fire. Return promtool's output."""
    tests = {'rule_files': [str(RULES)], 'evaluation_interval': '5m',
             'tests': [{'interval': '%ds' % SCRAPE,
                        'input_series': input_series(timelines, end),
                        'alert_rule_test': [
                            {'eval_time': '%ds' % at, 'alertname': alert,
                             'exp_alerts': [expected(alert)] if alert in firing else []}
                            for at, firing in checks for alert in ALERTS]}]}
    path = tmp_path / 'vmbackup.test.yml'
    path.write_text(json.dumps(tests, indent=1))       # JSON is YAML
    process = promtool('test', 'rules', path)
    assert process.returncode == 0, process.stdout + process.stderr
    return process.stdout



def file_label(style):
    """node_exporter's `file` label: the path since 1.3.0, the name before."""
    name = 'vmbackup_%s.prom' % MASTER
    return os.path.join(TEXTFILE_DIR, name) if style == 'path' else name


# --- the tests ----------------------------------------------------------------

def test_promtool_check_rules_passes_on_the_shipped_rules():
    process = promtool('check', 'rules', RULES)
    assert process.returncode == 0, process.stdout + process.stderr
    assert 'SUCCESS: %d rules found' % len(ALERTS) in process.stdout


def test_promtool_check_rules_fails_on_a_broken_rule(tmp_path):
    broken = tmp_path / 'broken.rules.yml'
    broken.write_text(rules_text().replace('max by (volume) (vmbackup_last_run',
                                           'max by (volume (vmbackup_last_run', 1))
    process = promtool('check', 'rules', broken)
    assert process.returncode != 0
    assert 'VmbackupLastRunFailed' in process.stdout + process.stderr


@needs_root
def test_no_alert_fires_on_the_metrics_of_a_good_run(runs, tmp_path):
    good = runs[0]
    zero = origin(runs)
    ended = int(good.ended) - zero
    timelines = {'gluster1:9100': [(ended, scraped(
        good, zero, 'gluster1:9100', file_label('path'), good.ended))]}
    promtool_test(tmp_path, timelines, ended + 36 * HOUR, [
        (ended + 20 * 60, ()), (ended + 24 * HOUR, ()),
        (ended + 35 * HOUR, ())])


@needs_root
@pytest.mark.parametrize('style', ['path', 'name'])
def test_each_alert_fires_on_the_metrics_of_a_failed_run(runs, tmp_path, style):
    good, failed = runs[:2]
    zero = origin(runs)
    node = 'gluster1:9100'
    label = file_label(style)
    timelines = {node: [
        (int(good.ended) - zero, scraped(good, zero, node, label, good.ended)),
        (int(failed.ended) - zero + 1, scraped(failed, zero, node, label, good.ended))]}
    failed_at = int(failed.ended) - zero
    success_at = int(good.ended) - zero
    promtool_test(tmp_path, timelines, success_at + 38 * HOUR, [
        # the failure itself, at once (after the rules' 10 minutes)
        (failed_at + 20 * 60, ('VmbackupLastRunFailed',)),
        # no run since: a day and a half after the last success
        (success_at + 37 * HOUR, ('VmbackupLastRunFailed', 'VmbackupNoRecentSuccess',
                                  'VmbackupRestorePointTooOld', 'VmbackupMetricsStale'))])


@needs_root
def test_a_node_that_lost_the_race_keeps_a_failed_run_and_no_alert_fires(runs, tmp_path):
    # gluster2 made the failed run and then lost every race (exit 3 writes
    # nothing): its file stays; gluster1 made the good runs around it
    good, failed, good_again = runs[:3]
    zero = origin(runs)
    timelines = {
        'gluster1:9100': [
            (int(good.ended) - zero, scraped(good, zero, 'gluster1:9100',
                                             file_label('path'), good.ended)),
            (int(good_again.ended) - zero + 1, scraped(
                good_again, zero, 'gluster1:9100', file_label('path'),
                good_again.ended))],
        'gluster2:9100': [
            (int(failed.ended) - zero + 1, scraped(failed, zero, 'gluster2:9100',
                                                   file_label('path'), good.ended))]}
    ended = int(good_again.ended) - zero
    promtool_test(tmp_path, timelines, ended + 25 * HOUR, [
        (ended + 20 * 60, ()), (ended + 24 * HOUR, ())])


@needs_root
def test_metrics_that_disappear_from_every_node_alert(runs, tmp_path):
    good = runs[0]
    zero = origin(runs)
    ended = int(good.ended) - zero
    node = 'gluster1:9100'
    timelines = {node: [(ended, scraped(good, zero, node, file_label('path'), good.ended)),
                        (ended + 2 * HOUR, None)]}
    promtool_test(tmp_path, timelines, ended + 3 * HOUR, [
        (ended + HOUR, ()), (ended + 2 * HOUR + 20 * 60, ('VmbackupMetricsGone',))])


@needs_root
def test_a_first_run_that_fails_alerts_at_once(runs, tmp_path):
    # no success known: last success 0, no restore point
    first_failed = runs[3]
    zero = origin(runs)
    failed_at = int(first_failed.ended) - zero
    node = 'gluster1:9100'
    timelines = {node: [(failed_at, scraped(first_failed, zero, node,
                                            file_label('path'), 0))]}
    promtool_test(tmp_path, timelines, failed_at + HOUR, [
        (failed_at + 20 * 60, ('VmbackupLastRunFailed', 'VmbackupNoRecentSuccess',
                               'VmbackupRestorePointTooOld'))])
