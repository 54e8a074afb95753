"""The prose kept true to the code: every config key in the README's table
and in backup.cfg.example, and the README's step list word for word the
docstring's (which is --help and the man page)."""
import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def known_keys(source):
    """Given vmbackup.py's text, return KNOWN_KEYS as {section: set of keys},
    read from the source without importing it."""
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign)
                and any(getattr(t, 'id', None) == 'KNOWN_KEYS' for t in node.targets)):
            return ast.literal_eval(node.value)
    raise AssertionError('KNOWN_KEYS not found in vmbackup.py')


def readme_table_keys(readme):
    """Given the README, return the (section, key) pairs of its config table."""
    return set(re.findall(r'^\| (\w+) \| `(\w+)` \|', readme, re.M))


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
    return sorted((section, key) for section, names in keys.items()
                  for key in names if (section, key) not in documented)


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


def test_every_config_key_is_in_the_readme_table():
    assert missing_keys(known_keys(SOURCE), readme_table_keys(README)) == []


def test_every_config_key_is_in_backup_cfg_example():
    assert missing_keys(known_keys(SOURCE), example_keys(EXAMPLE)) == []


def test_the_key_checks_notice_a_key_left_out():
    cut = re.sub(r'^\| lock \| `skip_within` \|.*\n', '', README, flags=re.M)
    assert missing_keys(known_keys(SOURCE), readme_table_keys(cut)) == [
        ('lock', 'skip_within')]
    cut = re.sub(r'^#?skip_within = .*\n', '', EXAMPLE, flags=re.M)
    assert missing_keys(known_keys(SOURCE), example_keys(cut)) == [
        ('lock', 'skip_within')]


def test_the_readme_lists_the_docstrings_ten_steps_word_for_word():
    steps = docstring_steps(SOURCE)
    assert len(steps) == 10
    assert readme_steps(README) == steps


def test_the_step_check_notices_a_changed_word():
    changed = README.replace('verifying its TLS certificate',
                             'checking its TLS certificate', 1)
    assert changed != README
    assert readme_steps(changed) != docstring_steps(SOURCE)
