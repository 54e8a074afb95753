"""make bench still runs: a tiny benchmark prints its table."""
import re
import subprocess
import sys

from support.site import TESTS, needs_root

BENCH = TESTS.parent / 'benchmarks' / 'bench.py'


@needs_root
def test_a_tiny_benchmark_prints_the_table_and_a_row():
    process = subprocess.run(
        [sys.executable, str(BENCH), '--vms', '3', '--create-latency', '0.2',
         '--merge-latency', '0.2', '--long-merge', '0.5', '--files', '2000'],
        capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stdout + process.stderr
    lines = process.stdout.splitlines()
    header = [line for line in lines if re.match(
        r'\s*N\s+disks\s+merge s\s+wall s\s+bound s\s+wall/bound\s+floor s', line)]
    assert header, process.stdout
    # N=3, disks 1+2+1, merge latency, then wall, bound, ratio, floor, ratio,
    # requests, req/VM, KiB/VM, busy, the two lags, RSS, paths, deleted (3
    # names per disk), exit 0, event normal; then the row of the long merges
    number = r'\s+[\d.]+'
    for merge, bound in (('0.2', '0.40'), ('0.5', '0.70')):
        row = [line for line in lines if re.match(
            r'\s*3\s+4\s+%s%s\s+%s%s%s%s\s+\d+%s%s%s%s%s%s\s+12\s+12\s+0\s+normal\s'
            % (re.escape(merge), number, re.escape(bound), number, number, number,
               number, number, number, number, number, number), line)]
        assert row, process.stdout
    assert 'walk / repair_chain' in process.stdout
    assert 'Traceback' not in process.stderr
