"""The report as blocks (headings, paragraphs, bullets, tables, figures) and its two renderings.

The page is built once as a list of blocks and rendered twice, so the HTML and the Markdown always say the same
thing. The HTML embeds every image as a base64 PNG data URI, carries its CSS inline and needs no script or
network; the Markdown links the PNGs by relative path.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from encseg.study import plots


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells to emphasise


@dataclass
class Image:
    title: str
    result: Path | plots.Skip
    caption: str = ""


Block = Heading | Para | Bullets | Table | Image


# ----------------------------------------------------------------------------------------- renderers
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 1em;overflow-wrap:anywhere}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;overflow-wrap:normal}th{background:#f0f0f0}
table{max-width:100%}td.wrap{overflow-wrap:anywhere}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:0.9em}
.skipped{color:#a33}
"""


def relative_paths(blocks: list[Block], study_dir: Path) -> list[Block]:
    """The same blocks with the study directory's absolute path dropped from their text (error lines and
    protocol entries quote files), so a report reads the same wherever the study was run or moved to."""
    prefixes = sorted({str(study_dir.resolve()) + "/", str(study_dir.absolute()) + "/"}, key=len, reverse=True)

    def rel(text: str) -> str:
        for prefix in prefixes:
            text = text.replace(prefix, "")
        return text

    out: list[Block] = []
    for b in blocks:
        if isinstance(b, Para):
            b = Para(rel(b.text))
        elif isinstance(b, Bullets):
            b = Bullets([rel(i) for i in b.items])
        elif isinstance(b, Table):
            b = Table([rel(h) for h in b.header], [[rel(str(c)) for c in row] for row in b.rows], b.bold)
        out.append(b)
    return out


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = []
    for i, row in enumerate(t.rows):
        cells = []
        for j, cell in enumerate(row):
            text = html.escape(str(cell))
            # run ids and long messages may break anywhere, so a wide table fits the page; numbers never do
            td = "<td>" if j and len(text) < 40 else '<td class="wrap">'
            cells.append(f"{td}<b>{text}</b></td>" if (i, j) in t.bold else f"{td}{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            out.append(_html_table(b))
        elif isinstance(b, Image):
            out.append(f"<h3>{html.escape(b.title)}</h3>")
            if isinstance(b.result, Path):
                data = base64.b64encode(b.result.read_bytes()).decode("ascii")
                out.append(f'<figure><img alt="{html.escape(b.title)}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
            else:
                out.append(f'<p class="skipped">Skipped: {html.escape(b.result.reason)}.</p>')
    title = next((b.text for b in blocks if isinstance(b, Heading)), "encseg study report")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(out) + "\n</body></html>\n")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block], base: Path) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, Para):
            out.append(f"{b.text}\n")
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {i}" for i in b.items) + "\n")
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                     "|" + "|".join("---" for _ in b.header) + "|"]
            for i, row in enumerate(b.rows):
                cells = [f"**{_md_cell(c)}**" if (i, j) in b.bold else _md_cell(c) for j, c in enumerate(row)]
                lines.append("| " + " | ".join(cells) + " |")
            out.append("\n".join(lines) + "\n")
        elif isinstance(b, Image):
            out.append(f"### {b.title}\n")
            if isinstance(b.result, Path):
                out.append(f"![{b.title}]({b.result.relative_to(base).as_posix()})\n\n{b.caption}\n")
            else:
                out.append(f"Skipped: {b.result.reason}.\n")
    return "\n".join(out)
