#!/usr/bin/env python3
"""Write vmbackup(8), the man page, from vmbackup.py's own argument parser.

    python3 dist/manpage.py [VMBACKUP_PY] > vmbackup.8

The page is made of what `vmbackup --help` prints: the parser's description
(vmbackup.py's docstring, the manual), its usage line, and every argument
with its help text, so the two cannot drift apart; and of vmbackup.py's
table of config keys (CONFIG_KEYS, the README's table too) for
CONFIGURATION. Only FILES and SEE ALSO, which are about the installed
package, are written here.

It imports vmbackup.py (default: the one beside this directory), which
imports ovirtsdk4: run it with a Python that has the SDK.
"""
import argparse
import importlib.util
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SOURCE = os.path.join(os.path.dirname(HERE), 'vmbackup.py')
PROG = 'vmbackup'

FILES = (
    ('/etc/vmbackup/backup.cfg',
     'The config file (INI; every key is described in it). It holds the '
     "engine's password: mode 0600."),
    ('/etc/vmbackup/logging.conf',
     'A logging.config.fileConfig file, used when backup.cfg names it as '
     '[logging] logger_conf; it writes /var/log/vmbackup/vmbackup.log.'),
    ('/etc/vmbackup/VOLUME.env',
     'The arguments of vmbackup@VOLUME.service: SLAVE, SLAVEVOL and '
     'OPTIONS.'),
    ('/usr/lib/systemd/system/vmbackup@.service, vmbackup@.timer',
     'The service, one instance per master volume, and its nightly timer.'),
    ('/etc/cron.d/vmbackup',
     'A cron line to edit and uncomment, where the timer is not used.'),
    ('/var/lib/vmbackup',
     'The status files, when gluster\'s shared storage is not mounted.'),
)
SEE_ALSO = ('gluster(8), glusterfs(8), qemu-img(1), ssh(1), systemd.timer(5), '
            'cron(8)')


def load_module(source):
    """Given the path of vmbackup.py, return it imported."""
    spec = importlib.util.spec_from_file_location('vmbackup', source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_parser(module):
    """Given vmbackup imported, return its argparse parser, with the
    program named as installed."""
    parser = module.build_parser()
    parser.prog = PROG
    return parser


def escape(text):
    """Given plain text, return it safe as roff text: backslashes doubled,
    hyphens as minus signs (so that options read and copy as typed), and a
    line's leading dot or quote kept from being a request."""
    text = text.replace('\\', '\\e').replace('-', '\\-')
    return re.sub(r"(?m)^([.'])", r'\\&\1', text)


def paragraphs(text):
    """Given text, return its paragraphs (blank-line separated) as lists of
    lines, common indentation removed."""
    blocks, block = [], []
    for line in text.expandtabs().splitlines():
        if line.strip():
            block.append(line.rstrip())
        elif block:
            blocks.append(block)
            block = []
    if block:
        blocks.append(block)
    return blocks


ITEM = re.compile(r'^\s*(\d+\.|[-*])\s+')


def description_roff(text):
    """Given the parser's description (plain text as --help prints it),
    return it as roff: flowing paragraphs stay flowing, numbered or bulleted
    lists become tagged paragraphs, other indented blocks stay as they are."""
    out = []
    for block in paragraphs(text):
        indented = all(line.startswith(' ') for line in block)
        if ITEM.match(block[0]) and indented or ITEM.match(block[0]) and \
                len(block) > 1 and block[1].startswith(' '):
            items = []
            for line in block:
                if ITEM.match(line):
                    items.append([line])
                else:
                    items[-1].append(line)
            for item in items:
                tag = ITEM.match(item[0]).group(1)
                body = ' '.join([ITEM.sub('', item[0], count=1)]
                                + [line.strip() for line in item[1:]])
                out += ['.IP "%s" 4' % escape(tag), escape(body)]
        elif indented:
            width = min(len(line) - len(line.lstrip()) for line in block)
            out += ['.PP', '.RS 4', '.nf']
            out += [escape(line[width:]) for line in block]
            out += ['.fi', '.RE']
        else:
            out += ['.PP', escape(' '.join(line.strip() for line in block))]
    return out


def options_roff(parser):
    """Given the parser, return one roff section per argument group, each
    argument as --help shows it (invocation, then the expanded help)."""
    formatter = parser._get_formatter()
    out = []
    for group in parser._action_groups:
        actions = [action for action in group._group_actions
                   if action.help != argparse.SUPPRESS]
        if not actions:
            continue
        title = {'positional arguments': 'ARGUMENTS',
                 'optional arguments': 'OPTIONS',
                 'options': 'OPTIONS'}.get(group.title, group.title.upper())
        out.append('.SH %s' % escape(title))
        if group.description:
            out += ['.PP', escape(group.description)]
        for action in actions:
            out += ['.TP',
                    '.B %s' % escape(formatter._format_action_invocation(action)),
                    escape(formatter._expand_help(action) if action.help
                           else '')]
    return out


CONFIG_INTRO = (
    'The config file named by -c is INI, with the sections and keys below '
    '(backup.cfg.example describes each at length). A key absent or empty '
    "takes its default; a relative path is taken from the config file's "
    'directory. Every bad value is named at once, one line for all, as '
    '[section] key, before anything is contacted (exit 2); an unknown '
    'section or key is a warning.')


def marked(text):
    """Given a line of the README's table (markdown), return it as roff:
    escaped, `code` in bold."""
    return re.sub(r'`([^`]*)`', r'\\fB\1\\fR', escape(text))


def key_roff(entry):
    """Given an entry of vmbackup's CONFIG_KEYS, return its paragraph: the
    key, what it means, its kind, range and default."""
    kind = entry.kind.name
    rule = getattr(entry.check, 'rule', None)
    if rule:
        kind += ', ' + rule
    default = 'required' if entry.required else 'default: ' + entry.shown
    body = (entry.meaning[:1].upper() + entry.meaning[1:] + '. '
            if entry.meaning else '')
    body += '%s%s; %s.' % (kind[:1].upper(), kind[1:], default)
    return ['.TP', '.B %s' % escape(entry.key), marked(body)]


def config_roff(keys):
    """Given vmbackup's CONFIG_KEYS, return the CONFIGURATION section: one
    subsection per config section, a tagged paragraph per key."""
    out = ['.SH CONFIGURATION', '.PP', escape(CONFIG_INTRO)]
    section = None
    for entry in keys:
        if entry.section != section:
            section = entry.section
            out.append('.SS [%s]' % escape(section))
        out += key_roff(entry)
    return out


def manpage(parser, version, keys=()):
    """Given the parser, the version and vmbackup's CONFIG_KEYS, return the
    whole page as roff."""
    description = parser.description or ''
    summary = paragraphs(description)[0] if description.strip() else ['']
    summary = ' '.join(line.strip() for line in summary).rstrip('.')
    # NAME is one short line: the first clause of the first sentence
    summary = re.split(r'[.,;:](\s|$)', summary)[0]
    usage = parser.format_usage().strip()
    usage = re.sub(r'^usage:\s*', '', usage)
    out = ['.\\" Generated by dist/manpage.py from vmbackup.py: do not edit.',
           '.TH VMBACKUP 8 "" "vmbackup %s" "System Administration"'
           % escape(version),
           # no hyphenation, ragged right: options and paths stay whole
           '.nh', '.ad l',
           '.SH NAME',
           '%s \\- %s' % (PROG, escape(summary[:1].lower() + summary[1:])),
           '.SH SYNOPSIS', '.nf', escape(usage), '.fi',
           '.SH DESCRIPTION']
    out += description_roff(description)
    out += options_roff(parser)
    if keys:
        out += config_roff(keys)
    if parser.epilog:
        out += description_roff(parser.epilog)
    out.append('.SH FILES')
    for path, what in FILES:
        out += ['.TP', '.I %s' % escape(path), escape(what)]
    out += ['.SH SEE ALSO', escape(SEE_ALSO)]
    return '\n'.join(out) + '\n'


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    source = argv[0] if argv else DEFAULT_SOURCE
    module = load_module(source)
    sys.stdout.write(manpage(load_parser(module), getattr(module, 'VERSION', ''),
                             getattr(module, 'CONFIG_KEYS', ())))
    return 0


if __name__ == '__main__':
    sys.exit(main())
