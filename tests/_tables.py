"""Tables as the tests read them: by column name, not by spacing (icft.tables writes them)."""

from __future__ import annotations

import re


def read_text(text: str) -> list[dict[str, str]]:
    """The rows of the first plain-text table in `text` (`tables.text`: a header, a rule of dashes, rows), each as
    {column: cell}. Columns are where the rule's dashes are; the table ends at a blank line, an indented line (a
    note under it) or the end."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line and set(line) <= {"-", " "} and i > 0)
    spans = [m.span() for m in re.finditer(r"-+", lines[rule])]
    # the last column runs to the end of each line: a left-aligned last cell may be longer than the rule says
    spans[-1] = (spans[-1][0], None)

    def cells(line: str) -> list[str]:
        return [line[start:end].strip() for start, end in spans]

    header = cells(lines[rule - 1])
    body = []
    for line in lines[rule + 1 :]:
        if not line.strip() or line[0].isspace():
            break
        body.append(dict(zip(header, cells(line))))
    return body


def read_markdown(text: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in `text`, each as {column: cell}."""
    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    header, body = table[0], table[2:]  # table[1] is the rule
    return [dict(zip(header, row)) for row in body]
