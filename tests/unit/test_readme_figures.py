"""Every figure in a results table of the READMEs and docs comes from a committed result file.

A results table is announced by a comment on the line before it that names its sources,
relative to the repository root:

    <!-- results: benchmarks/results/benchmark.json -->
    | figure | unit | this repo | ... |

Each number in such a table (outside the first column and the `target`, `command` and
`published` columns) must be found in one of the named files: a value that rounds to it at the
printed precision, directly or as a percentage of a fraction. Tables under a Performance,
Accuracy, Results, Benchmark or GPU heading must carry such a comment.
"""
import csv
import json
import os
import re

import pytest

from tests.helpers import REPO

MARKER = re.compile(r"<!--\s*results:\s*(.*?)\s*-->")
NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])-?\d+(?:\.\d+)?")
# Columns that describe a run (its data, recipe, goal or command) rather than measure it.
SKIPPED_COLUMNS = ("target", "command", "published", "data", "recipe", "目标", "命令", "公布",
                   "数据", "训练方案")
RESULT_HEADINGS = ("performance", "accuracy", "results", "benchmark", "gpu", "性能", "精度",
                   "结果", "基准")


def documents():
    paths = [os.path.join(REPO, "README.md"), os.path.join(REPO, "README_CN.md")]
    docs = os.path.join(REPO, "docs")
    if os.path.isdir(docs):
        paths += sorted(os.path.join(docs, name) for name in os.listdir(docs)
                        if name.endswith(".md"))
    return paths


def tables(text):
    """(heading, sources or None, header cells, body rows) for each markdown table."""
    lines, heading, found = text.splitlines(), "", []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$",
                                                                    lines[i + 1]):
            previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.search(previous)
            sources = marker.group(1).split() if marker else None
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            found.append((heading, sources, header, rows))
            continue
        i += 1
    return found


def numeric_values(path):
    """Every number in a JSON or CSV result file (nested values included)."""
    values = []
    if path.endswith(".json"):
        def walk(node):
            if isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)
            elif isinstance(node, (int, float)) and not isinstance(node, bool):
                values.append(float(node))
        with open(path, encoding="utf-8") as handle:
            walk(json.load(handle))
    else:
        with open(path, encoding="utf-8", newline="") as handle:
            for row in csv.reader(handle):
                for cell in row:
                    try:
                        values.append(float(cell))
                    except ValueError:
                        pass
    return values


def is_backed(text, values):
    """True when a value rounds to the printed number, directly or as a percentage."""
    number = float(text.replace(",", ""))
    decimals = len(text.split(".", 1)[1]) if "." in text else 0
    tolerance = 0.5 * 10 ** -decimals + 1e-9
    return any(abs(v - number) <= tolerance or abs(100 * v - number) <= tolerance
               for v in values)


def cell_numbers(cell):
    cell = re.sub(r"`[^`]*`", "", cell)  # commands and keys are not figures
    return NUMBER.findall(cell)


def unbacked_figures(header, rows, values):
    missing = []
    checked = [i for i, name in enumerate(header)
               if i > 0 and not any(word in name.lower() for word in SKIPPED_COLUMNS)]
    for row in rows:
        for i in checked:
            if i < len(row):
                missing += [f"{row[0]} / {header[i]}: {n}" for n in cell_numbers(row[i])
                            if not is_backed(n, values)]
    return missing


def result_tables():
    for path in documents():
        with open(path, encoding="utf-8") as handle:
            for heading, sources, header, rows in tables(handle.read()):
                yield os.path.relpath(path, REPO), heading, sources, header, rows


def test_matcher_rejects_a_figure_that_is_not_in_the_file():
    values = [118.497, 0.7495, 20288.2]
    header, rows = ["figure", "value", "target"], [["a", "118 and 75 %", "≥ 1.2x"],
                                                   ["b", "20,288", "9"], ["c", "119", ""]]
    assert unbacked_figures(header, rows, values) == ["c / value: 119"]


def test_results_tables_name_their_source():
    unmarked = [f"{doc}: table under '{heading}'" for doc, heading, sources, _, _ in
                result_tables()
                if sources is None and any(w in heading.lower() for w in RESULT_HEADINGS)]
    assert not unmarked, "results tables without a <!-- results: FILE --> line: " + \
        "; ".join(unmarked)


def test_the_readme_has_results_tables():
    assert any(doc == "README.md" and sources for doc, _, sources, _, _ in result_tables())


@pytest.mark.parametrize("doc,heading,sources,header,rows",
                         [t for t in result_tables() if t[2] is not None])
def test_every_figure_is_in_a_committed_result_file(doc, heading, sources, header, rows):
    values = []
    for source in sources:
        path = os.path.join(REPO, source)
        assert os.path.isfile(path), f"{doc} '{heading}': result file {source} is missing"
        values += numeric_values(path)
    missing = unbacked_figures(header, rows, values)
    assert not missing, f"{doc} '{heading}': figures not found in {sources}: {missing}"
