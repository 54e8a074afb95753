"""make bench still runs: a tiny benchmark prints its table."""
import re
import subprocess
import sys

from conftest import HERE, needs_root

BENCH = HERE.parent / 'benchmarks' / 'bench.py'


@needs_root
def test_a_tiny_benchmark_prints_the_table_and_a_row():
    process = subprocess.run(
        [sys.executable, str(BENCH), '--vms', '3', '--create-latency', '0.2',
         '--merge-latency', '0.2', '--files', '2000'],
        capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stdout + process.stderr
    lines = process.stdout.splitlines()
    header = [line for line in lines if re.match(r'\s*N\s+disks\s+wall s\s+bound s', line)]
    assert header, process.stdout
    # N=3, disks 1+2+1, then wall, bound, ratio, requests, req/VM, RSS, paths,
    # deleted (3 names per disk), exit 0, event normal
    row = [line for line in lines if re.match(
        r'\s*3\s+4\s+[\d.]+\s+0\.40\s+[\d.]+\s+\d+\s+[\d.]+\s+[\d.]+\s+12\s+12\s+0\s+normal\s',
        line)]
    assert row, process.stdout
    assert 'walk / delete_overlays' in process.stdout
    assert 'Traceback' not in process.stderr
