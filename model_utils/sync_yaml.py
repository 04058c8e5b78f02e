"""Writes the help and choices parts (2nd and 3rd documents) of the repository YAMLs from
model_utils/schema.py; the values part, comments included, is kept byte for byte.

    python -m model_utils.sync_yaml            # rewrite every *.yaml at the repository root
    python -m model_utils.sync_yaml --check    # exit 1, naming each file that has drifted
"""
import glob
import json
import os
import re
import sys

import yaml

from model_utils.schema import KEYS, SCHEMA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)


def repository_yamls():
    return sorted(glob.glob(os.path.join(REPO, "*.yaml")))


def generated_parts():
    """The help and choices documents, as text (JSON strings and lists are YAML flow scalars)."""
    help_lines = [f"{key.name}: {json.dumps(key.help, ensure_ascii=False)}" for key in KEYS]
    choice_lines = [f"{key.name}: {json.dumps(list(key.choices), ensure_ascii=False)}"
                    for key in KEYS if key.choices]
    return ("---\n# Help description for each key\n" + "\n".join(help_lines) + "\n\n"
            "---\n# Choices\n" + "\n".join(choice_lines) + "\n")


def values_part(text):
    """The first document's text: up to the first '---' line, or all of it without one."""
    match = SEPARATOR.search(text)
    if match:
        return text[:match.start()]
    return text.rstrip("\n") + "\n\n"  # values only: the generated parts follow a blank line


def synced(text):
    return values_part(text) + generated_parts()


def key_problems(path, text):
    """Keys the schema has and the values part lacks, and the other way round."""
    values = yaml.safe_load(values_part(text)) or {}
    name = os.path.basename(path)
    missing = [key for key in SCHEMA if key not in values]
    unknown = [str(key) for key in values if key not in SCHEMA]
    problems = []
    if missing:
        problems.append(f"{name}: keys of the schema without a value: {', '.join(missing)}")
    if unknown:
        problems.append(f"{name}: values for keys the schema lacks: {', '.join(unknown)}")
    return problems


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def check(paths):
    """One line for each file whose help or choices part is not the generated one, or whose
    values do not cover the schema exactly; empty when everything is in step."""
    problems = []
    for path in paths:
        text = _read(path)
        if text != synced(text):
            problems.append(f"{os.path.basename(path)}: help or choices part differs from "
                            "model_utils/schema.py (run python -m model_utils.sync_yaml)")
        problems += key_problems(path, text)
    return problems


def write(paths):
    """Rewrites the files whose generated parts are out of date; returns their paths."""
    changed = []
    for path in paths:
        text = _read(path)
        if text != synced(text):
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(synced(text))
            changed.append(path)
    return changed


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    checking = "--check" in argv
    paths = [a for a in argv if a != "--check"] or repository_yamls()
    if checking:
        problems = check(paths)
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    for path in write(paths):
        print(f"updated {os.path.relpath(path)}")
    for path in paths:  # values are the user's to write: reported, never invented
        for line in key_problems(path, _read(path)):
            print(f"warning: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
