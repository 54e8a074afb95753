"""Reading gluster's --xml answers: the session check, the replica sets of
`volume info`, the pairs of `geo-replication status detail`, which sets
had this run's checkpoint, and CheckpointWatch's evidence. The XML is what
tests/fakebin/gluster answers (GlusterFS 10.3's, cli/src/cli-xml-output.c;
see its docstring), asked for here, not copied: the unit tests read what
the whole-run tests' fake says."""
import argparse
import json
import logging
import os
import subprocess
import sys
import time

import pytest

import vmbackup

FAKEBIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'fakebin')
GLUSTER = os.path.join(FAKEBIN, 'gluster')
MASTER, HOST, SLAVEVOL = 'vmstore', 'backup.example.com', 'vmstore-dr'
FOUR_BRICKS = ['g1:/b/{master}', 'g2:/b/{master}', 'g3:/b/{master}', 'g4:/b/{master}']
NOW = int(time.time())


def utc(epoch):
    return time.strftime(vmbackup.GEOREP_TIME, time.gmtime(epoch))


class FakeGluster:
    """The fake gluster CLI in a directory of its own: behave(), set the
    workers' state as the fake scheduler writes it, and ask()."""

    def __init__(self, root):
        self.root = root

    def behave(self, **gluster):
        (self.root / 'behaviour.json').write_text(json.dumps({'gluster': gluster}))

    def workers(self, state, master=MASTER, slavevol=SLAVEVOL):
        (self.root / ('georep-%s-%s.json' % (master, slavevol))).write_text(json.dumps(state))

    def env(self):
        return dict(os.environ, FAKE_GLUSTER_ROOT=str(self.root))

    def ask(self, *words):
        process = subprocess.run([sys.executable, GLUSTER, '--mode=script'] + list(words),
                                 env=self.env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, universal_newlines=True,
                                 timeout=60)
        return process.returncode, process.stdout, process.stderr

    def volume_info(self, master=MASTER):
        return self.ask('volume', 'info', master, '--xml')[1]

    def status_detail(self):
        return self.ask('volume', 'geo-replication', 'status', 'detail', '--xml')[1]


@pytest.fixture
def gluster(tmp_path):
    return FakeGluster(tmp_path)


def complete(checkpoint=NOW, completed='Yes', status='Active'):
    return dict(status=status, checkpoint_completed=completed,
                checkpoint_time=utc(checkpoint), checkpoint_completion_time=utc(checkpoint + 5))


# the session check -----------------------------------------------------------------

@pytest.mark.parametrize('behaviour, slave, expected', [
    ({}, 'root@%s::%s' % (HOST, SLAVEVOL), None),
    ({}, '%s::other' % HOST, 'missing'),                     # exit 2, no XML
    ({'sessions': []}, 'root@%s::%s' % (HOST, SLAVEVOL), 'missing'),
    ({'glusterd': 'down'}, 'root@%s::%s' % (HOST, SLAVEVOL),
     'gluster exited with status 1: Connection failed. Please check if gluster daemon '
     'is operational.'),
    ({'warning': 'Warning: a note on stderr'}, 'root@%s::%s' % (HOST, SLAVEVOL), None),
])
def test_the_session_check_reads_the_fake_glusters_answers(gluster, behaviour, slave,
                                                           expected):
    gluster.behave(**behaviour)
    status, output, errors = gluster.ask('volume', 'geo-replication', MASTER, slave,
                                         'status', '--xml')
    assert vmbackup.session_problem(status, output, errors) == expected


@pytest.mark.parametrize('status, output, expected', [
    (0, 'no xml at all', 'gluster answered without its XML'),
    (0, '<cliOutput><opRet>0</opRet>', 'gluster answered without its XML'),
    (0, '<cliOutput><opRet>-1</opRet><opErrstr>Another transaction is in progress'
        '</opErrstr></cliOutput>', 'Another transaction is in progress'),
    (0, '<cliOutput><opRet>-1</opRet></cliOutput>', 'gluster failed'),
    (None, '', 'gluster did not answer within 120 seconds'),
    (1, '', 'gluster exited with status 1'),
])
def test_a_session_answer_that_is_not_one_says_what_it_was(status, output, expected):
    assert vmbackup.session_problem(status, output) == expected


def test_a_gluster_that_cannot_run_is_told_by_its_error():
    error = FileNotFoundError(2, 'No such file or directory')
    assert 'No such file or directory' in vmbackup.session_problem(error, '')


# volume info: the replica sets ------------------------------------------------------

def test_a_single_brick_volume_is_one_set_of_one(gluster):
    assert vmbackup.replica_sets(gluster.volume_info(), MASTER) == [
        ['gluster1.example.com:/gluster_bricks/vmstore/vmstore']]


def test_four_bricks_of_replica_2_are_two_sets_of_consecutive_bricks(gluster):
    gluster.behave(bricks=FOUR_BRICKS, replica=2)
    assert vmbackup.replica_sets(gluster.volume_info(), MASTER) == [
        ['g1:/b/vmstore', 'g2:/b/vmstore'], ['g3:/b/vmstore', 'g4:/b/vmstore']]


def test_a_dispersed_volume_is_grouped_by_its_disperse_count(gluster):
    gluster.behave(bricks=FOUR_BRICKS[:3] + ['g1:/c/{master}', 'g2:/c/{master}',
                                             'g3:/c/{master}'])
    output = gluster.volume_info().replace('<disperseCount>0<', '<disperseCount>3<')
    assert vmbackup.replica_sets(output, MASTER) == [
        ['g1:/b/vmstore', 'g2:/b/vmstore', 'g3:/b/vmstore'],
        ['g1:/c/vmstore', 'g2:/c/vmstore', 'g3:/c/vmstore']]


@pytest.mark.parametrize('change', [
    lambda xml: xml.replace('<opRet>0<', '<opRet>-1<'),
    lambda xml: xml.replace('<name>vmstore</name>', '<name>other</name>', 1),
    lambda xml: xml.replace('<replicaCount>2<', '<replicaCount>two<'),
    lambda xml: xml.replace('<replicaCount>2<', '<replicaCount>3<'),     # 4 % 3
    lambda xml: xml.replace('<name>g2:/b/vmstore</name>', '<name></name>'),
    lambda xml: xml[:len(xml) // 2],                                     # cut short
    lambda xml: '',
], ids=['opRet', 'another-volume', 'count-not-a-number', 'bricks-not-whole-sets',
        'brick-without-name', 'cut-short', 'empty'])
def test_a_volume_info_that_does_not_describe_the_volume_is_none(gluster, change):
    gluster.behave(bricks=FOUR_BRICKS, replica=2)
    assert vmbackup.replica_sets(change(gluster.volume_info()), MASTER) is None


def test_the_fake_says_opret_minus_1_for_a_volume_it_does_not_have(gluster):
    assert vmbackup.replica_sets(gluster.volume_info('nosuchvol'), 'nosuchvol') is None


# status detail: the pairs of this session --------------------------------------------

def test_the_pairs_are_this_sessions_only_whatever_the_slave_user(gluster):
    gluster.behave(sessions=['vmstore %s::%s' % (HOST, SLAVEVOL),
                             'vmstore %s::vmstore-dr2' % HOST,
                             'other %s::%s' % (HOST, SLAVEVOL)],
                   bricks=FOUR_BRICKS, replica=2)
    gluster.workers({'g1:/b/vmstore': complete()})
    output = gluster.status_detail()
    for slave in (HOST, 'root@' + HOST, 'geoaccount@' + HOST):
        pairs = vmbackup.session_pairs(output, MASTER, slave, SLAVEVOL)
        assert [(p['primary_node'], p['status']) for p in pairs] == [
            ('g1', 'Active'), ('g2', 'Stopped'), ('g3', 'Stopped'), ('g4', 'Stopped')]
        assert {p['secondary'] for p in pairs} == {'ssh://%s::%s' % (HOST, SLAVEVOL)}
    assert pairs[0]['checkpoint_completed'] == 'Yes'
    assert pairs[0]['checkpoint_time'] == utc(NOW)
    assert vmbackup.session_pairs(output, MASTER, HOST, 'vmstore-dr3') == []


def test_the_pairs_of_a_release_that_says_slave_are_read_too(gluster):
    output = gluster.status_detail().replace('<secondary>', '<slave>').replace(
        '</secondary>', '</slave>')
    (pair,) = vmbackup.session_pairs(output, MASTER, HOST, SLAVEVOL)
    assert pair['slave'] == 'ssh://%s::%s' % (HOST, SLAVEVOL)


@pytest.mark.parametrize('output', [
    '', 'geo-replication command failed\n',
    '<cliOutput><opRet>-1</opRet><opErrstr>Another transaction</opErrstr></cliOutput>'])
def test_a_status_detail_that_is_no_status_is_none(output):
    assert vmbackup.session_pairs(output, MASTER, HOST, SLAVEVOL) is None


def test_the_fake_without_sessions_fails_as_gluster_does(gluster):
    gluster.behave(sessions=[])
    status, output, _ = gluster.ask('volume', 'geo-replication', 'status', 'detail', '--xml')
    assert status == 2
    assert vmbackup.session_pairs(output, MASTER, HOST, SLAVEVOL) is None


# which sets had this run's checkpoint ------------------------------------------------

SETS = [['g1:/b', 'g2:/b'], ['g3:/b', 'g4:/b']]


def pair(node, status='Active', checkpoint=NOW, completed='Yes', legacy=False):
    prefix = 'master' if legacy else 'primary'
    return {prefix + '_node': node, prefix + '_brick': '/b', 'status': status,
            'checkpoint_time': utc(checkpoint) if checkpoint else 'N/A',
            'checkpoint_completed': completed,
            'checkpoint_completion_time': utc(checkpoint + 3) if checkpoint else 'N/A'}


def test_a_set_counts_only_with_an_active_worker_on_this_runs_completed_checkpoint():
    pairs = [pair('g1'), pair('g2', status='Passive'),
             pair('g3', completed='No'), pair('g4', status='Passive')]
    assert vmbackup.completed_sets(SETS, pairs, NOW) == {
        0: ('g1:/b', utc(NOW), utc(NOW + 3))}
    assert vmbackup.active_sets(SETS, pairs, NOW) == {0, 1}


@pytest.mark.parametrize('pairs', [
    [pair('g1', checkpoint=NOW - 60)],                  # an earlier run's checkpoint
    [pair('g1', checkpoint=None)],                      # N/A
    [pair('g1', status='Faulty')],
    [pair('g1', status='Passive')],
    [pair('g9')],                                        # a brick of no set
    [],
])
def test_no_set_is_done_or_active_without_an_active_worker_on_this_runs_checkpoint(pairs):
    assert vmbackup.completed_sets(SETS, pairs, NOW) == {}
    assert vmbackup.active_sets(SETS, pairs, NOW) == set()


def test_the_pairs_of_a_release_that_says_master_count_too():
    pairs = [pair('g2', legacy=True), pair('g4', legacy=True, completed='No')]
    assert set(vmbackup.completed_sets(SETS, pairs, NOW)) == {0}
    assert vmbackup.active_sets(SETS, pairs, NOW) == {0, 1}


def test_the_workers_of_a_set_are_described_as_they_were_seen():
    pairs = [pair('g1', status='Passive', completed='N/A'), pair('g3')]
    assert vmbackup.describe_pairs(SETS[0], pairs) == 'g1:/b Passive, checkpoint N/A'
    assert vmbackup.describe_pairs(SETS[1], []) == 'no worker'


# CheckpointWatch, polling the fake gluster -------------------------------------------

def watch_of(gluster, monkeypatch, interval=1):
    monkeypatch.setenv('FAKE_GLUSTER_ROOT', str(gluster.root))
    args = argparse.Namespace(mastervol=MASTER, slave='root@' + HOST, slavevol=SLAVEVOL,
                              interval=interval)
    settings = vmbackup.Settings(gluster=GLUSTER)
    return vmbackup.CheckpointWatch(args, settings)


def polled(watch, polls=1):
    """Enter the watch and wait for its first polls (each reads gluster)."""
    deadline = time.monotonic() + 60
    while watch.polls < polls:
        assert watch.thread.is_alive() and time.monotonic() < deadline
        watch.ended.wait(0.02)


def test_every_set_seen_complete_is_evidence_and_logged(gluster, monkeypatch, caplog):
    gluster.behave(bricks=FOUR_BRICKS, replica=2)
    gluster.workers({'g1:/b/vmstore': complete(), 'g4:/b/vmstore': complete()})
    watch = watch_of(gluster, monkeypatch)
    watch.since = NOW - 1
    with caplog.at_level(logging.INFO, logger='vmbackup'):
        with watch:
            polled(watch)
        assert watch.evidence() is None
    assert not watch.thread.is_alive()
    logged = [r.getMessage() for r in caplog.records]
    assert ('geo-replication vmstore -> %s::%s: checkpoint of %s UTC completed at %s UTC '
            'on g4:/b/vmstore (replica set 2 of 2)' % (HOST, SLAVEVOL, utc(NOW),
                                                       utc(NOW + 5))) in logged
    # the polls asked gluster for the bricks once, then for the status
    calls = [json.loads(line)['argv'] for line in
             (gluster.root / 'calls.jsonl').read_text().splitlines()]
    assert calls[0] == ['--mode=script', 'volume', 'info', MASTER, '--xml']
    assert calls[1:] and all(c[-3:] == ['status', 'detail', '--xml'] for c in calls[1:])


def test_a_set_not_seen_complete_is_named_with_its_workers(gluster, monkeypatch):
    gluster.behave(bricks=FOUR_BRICKS, replica=2)
    gluster.workers({'g1:/b/vmstore': complete(),
                     'g3:/b/vmstore': complete(completed='No'),
                     'g4:/b/vmstore': dict(status='Passive')})
    watch = watch_of(gluster, monkeypatch)
    watch.since = NOW - 1
    with watch:
        polled(watch)
    problem = watch.evidence()
    assert problem.startswith("geo-replication's checkpoint was not seen complete on an "
                              'Active worker of replica set 2 (g3:/b/vmstore g4:/b/vmstore) '
                              'while the session ran (')
    assert problem.endswith('last seen: g3:/b/vmstore Active, checkpoint No; '
                            'g4:/b/vmstore Passive, checkpoint N/A)')


def test_an_earlier_runs_checkpoint_is_no_evidence(gluster, monkeypatch):
    gluster.workers({'gluster1.example.com:/gluster_bricks/vmstore/vmstore':
                     complete(checkpoint=NOW - 3600)})
    watch = watch_of(gluster, monkeypatch)
    watch.since = NOW - 1
    with watch:
        polled(watch)
    assert 'was not seen complete' in watch.evidence()


def seen_active_then(gluster, monkeypatch, line):
    """A watch that polled the brick Active on this run's checkpoint, not
    yet complete, then got the scheduler's line; return it, stopped."""
    gluster.workers({'gluster1.example.com:/gluster_bricks/vmstore/vmstore':
                     complete(completed='No')})
    watch = watch_of(gluster, monkeypatch, interval=3600)
    watch.since = NOW - 1
    with watch:
        polled(watch)
        watch.nudge(line)
    return watch


def test_an_active_worker_just_before_the_schedulers_complete_counts(gluster, monkeypatch):
    # the scheduler stops the session as soon as it reads COMPLETE: a poll
    # of ours may have seen the set Active on this run's checkpoint only
    watch = seen_active_then(gluster, monkeypatch, '[    OK] All Checkpoints COMPLETE')
    assert watch.active and watch.complete_said is not None
    assert watch.evidence() is None


def test_an_active_worker_without_the_schedulers_complete_is_not_enough(gluster,
                                                                       monkeypatch):
    watch = seen_active_then(gluster, monkeypatch, '[    OK] a line that is not the end')
    assert 'was not seen complete' in watch.evidence()


def test_a_volume_whose_bricks_gluster_does_not_list_is_told(gluster, monkeypatch):
    gluster.behave(sessions=['other %s::%s' % (HOST, SLAVEVOL)])
    watch = watch_of(gluster, monkeypatch)
    with watch:
        pass
    assert watch.evidence() == ('gluster did not list the bricks of volume vmstore '
                                '(volume info --xml)')


def test_a_gluster_that_cannot_run_leaves_no_evidence_and_no_error(gluster, monkeypatch):
    watch = watch_of(gluster, monkeypatch)
    watch.settings.gluster = str(gluster.root / 'no-such-gluster')
    with watch:
        pass
    assert watch.polls == 0
    assert watch.evidence().startswith('gluster did not list the bricks')


def test_a_status_that_cannot_be_read_while_the_scheduler_ran_is_told(gluster,
                                                                      monkeypatch):
    watch = watch_of(gluster, monkeypatch)
    watch.sets = [['gluster1.example.com:/gluster_bricks/vmstore/vmstore']]
    gluster.behave(sessions=[])        # status detail: exit 2, no XML
    with watch:
        pass
    assert watch.evidence() == ('geo-replication status detail of vmstore -> %s::%s could '
                                'not be read while the scheduler ran' % (HOST, SLAVEVOL))
