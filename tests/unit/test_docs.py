"""The prose kept true to the code: the README's table of config keys row
by row vmbackup's CONFIG_KEYS, every key in backup.cfg.example, and the
README's step list word for word the docstring's (which is --help and the
man page)."""
import ast
import pathlib
import re

import vmbackup

ROOT = pathlib.Path(__file__).resolve().parents[2]


def known_keys():
    """Return vmbackup's config keys as (section, key) pairs, in its order."""
    return [(entry.section, entry.key) for entry in vmbackup.CONFIG_KEYS]


def table_rows():
    """Return the rows the README's table of keys must have: (section, key,
    meaning, default) of each entry of CONFIG_KEYS, in its order."""
    return [(entry.section, entry.key, entry.meaning, entry.shown)
            for entry in vmbackup.CONFIG_KEYS]


def readme_table(readme):
    """Given the README, return the rows of its table of config keys as
    (section, key, meaning, default)."""
    rows = []
    for line in readme.splitlines():
        if re.match(r'^\| \w+ \| `\w+` \|', line):
            section, key, meaning, default = [
                cell.strip() for cell in line.strip().strip('|').split('|')]
            rows.append((section, key.strip('`'), meaning, default))
    return rows


def readme_table_keys(readme):
    """Given the README, return the (section, key) pairs of its config table."""
    return {row[:2] for row in readme_table(readme)}


def example_keys(example):
    """Given backup.cfg.example, return the (section, key) pairs it sets or
    shows commented out."""
    pairs, section = set(), None
    for line in example.splitlines():
        header = re.match(r'^\[(\w+)\]', line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r'^#?(\w+) =', line)
        if key and section:
            pairs.add((section, key.group(1)))
    return pairs


def missing_keys(keys, documented):
    return sorted(pair for pair in keys if pair not in documented)


def normalise(text):
    return ' '.join(text.replace('`', '').split())


def numbered_steps(text):
    """Given text holding a numbered list from 1, return its items,
    normalised (whitespace collapsed, markdown backticks dropped)."""
    items, current = [], None
    for line in text.splitlines():
        item = re.match(r'^\s*(\d+)\. (.*)', line)
        if item and int(item.group(1)) == len(items) + 1:
            current = [item.group(2)]
            items.append(current)
        elif current is not None and line.startswith('   ') and line.strip():
            current.append(line)
        else:
            current = None
            if items and not line.strip():
                continue
            if items:
                break
    return [normalise(' '.join(item)) for item in items]


def docstring_steps(source):
    doc = ast.get_docstring(ast.parse(source))
    return numbered_steps(doc.split('The steps of a run:', 1)[1])


def readme_steps(readme):
    return numbered_steps(readme.split('## What it does', 1)[1])


SOURCE = (ROOT / 'vmbackup.py').read_text()
README = (ROOT / 'README.md').read_text()
EXAMPLE = (ROOT / 'backup.cfg.example').read_text()


def test_the_readme_table_of_keys_is_vmbackups_row_by_row():
    assert readme_table(README) == table_rows()


def test_every_config_key_is_in_backup_cfg_example():
    assert missing_keys(known_keys(), example_keys(EXAMPLE)) == []


def test_the_key_checks_notice_a_key_left_out():
    cut = re.sub(r'^\| lock \| `skip_within` \|.*\n', '', README, flags=re.M)
    assert missing_keys(known_keys(), readme_table_keys(cut)) == [
        ('lock', 'skip_within')]
    cut = re.sub(r'^#?skip_within = .*\n', '', EXAMPLE, flags=re.M)
    assert missing_keys(known_keys(), example_keys(cut)) == [
        ('lock', 'skip_within')]


def test_the_table_check_notices_a_changed_default():
    changed = README.replace('| seconds for one API request | 300 |',
                             '| seconds for one API request | 30 |', 1)
    assert changed != README
    (difference,) = set(readme_table(changed)) - set(table_rows())
    assert difference == ('connection', 'timeout', 'seconds for one API request', '30')


def test_the_readme_lists_the_docstrings_ten_steps_word_for_word():
    steps = docstring_steps(SOURCE)
    assert len(steps) == 10
    assert readme_steps(README) == steps


def test_the_step_check_notices_a_changed_word():
    changed = README.replace('verifying its TLS certificate',
                             'checking its TLS certificate', 1)
    assert changed != README
    assert readme_steps(changed) != docstring_steps(SOURCE)
