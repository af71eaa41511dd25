"""The project stands alone: a clone has nothing beside it, so no file refers to files outside the repository.

The paper is cited as arXiv 1511.07122 and the authors' code by repository and file; measured facts are in docs/.
Only tests and experiments may read the real datasets beside a checkout (`../shared/datasets`), skipping where absent.
"""

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Spelled in pieces, so that this file does not match itself.
NOTES = re.compile('|'.join(re.escape(n) for n in ('paper' + '.md', 'MEASURED' + '.md', 'DESIGN' + '.md')))
OUTSIDE = re.compile(re.escape('..' + '/shared'))
DATASETS = re.compile(re.escape('..' + '/shared/datasets'))


def project_files():
  """The files of the repository, as a clone has them."""
  listed = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, text=True)
  if listed.returncode == 0 and listed.stdout:
    return [p for p in listed.stdout.split('\0') if p]
  out = []  # no git (an unpacked archive): the tree, less what runs write
  for folder, dirs, names in os.walk(ROOT):
    dirs[:] = [d for d in dirs if not d.startswith('.') and d not in ('runs', 'data', '__pycache__')]
    out += [os.path.relpath(os.path.join(folder, n), ROOT) for n in names]
  return out


def offending_lines(pattern, files):
  out = []
  for path in files:
    try:
      text = open(os.path.join(ROOT, path), encoding='utf-8').read()
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
      continue  # binary files (pictures), or deleted and not yet committed
    out += [f'{path}:{i}: {line.strip()}' for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
  return out


def test_no_file_cites_notes_that_a_clone_does_not_have():
  assert offending_lines(NOTES, project_files()) == []


def test_only_tests_and_experiments_read_beside_the_checkout_and_only_the_datasets():
  files = project_files()
  inside = [p for p in files if not p.startswith(('tests/', 'experiments/'))]
  assert offending_lines(OUTSIDE, inside) == []
  beside = [line for line in offending_lines(OUTSIDE, [p for p in files if p not in inside])
            if not DATASETS.search(line)]
  assert beside == []
