"""Reports: one document model rendered to both Markdown and standalone HTML, plus figure helpers.

A `Doc` is a list of blocks (heading, paragraph, table, figure, code). `write(dir)` renders
report.md and index.html side by side; figures are PNGs in the same directory referenced by
relative path, so the directory can be moved or served as is.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lowprec.fileio import atomic_write_text  # noqa: E402

_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child,td.text{text-align:left}img{max-width:100%;border:1px solid #eee}
code,pre{background:#f6f6f6;padding:2px 4px}pre{padding:8px;overflow-x:auto}.alarm{color:#b00;font-weight:bold}"""


@dataclass
class Doc:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> "Doc":
        self.blocks.append(("heading", (level, text)))
        return self

    def para(self, text: str) -> "Doc":
        self.blocks.append(("para", text))
        return self

    def table(self, header: list[str], rows: list[list[Any]]) -> "Doc":
        self.blocks.append(("table", (header, rows)))
        return self

    def figure(self, filename: str, caption: str) -> "Doc":
        self.blocks.append(("figure", (filename, caption)))
        return self

    def code(self, text: str) -> "Doc":
        self.blocks.append(("code", text))
        return self

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                out += ["#" * value[0] + " " + value[1], ""]
            elif kind == "para":
                out += [value, ""]
            elif kind == "table":
                header, rows = value
                out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(_md_cell(_cell(c)) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "figure":
                out += [f"![{value[1]}]({value[0]})", "", f"*{value[1]}*", ""]
            elif kind == "code":
                out += ["```", value, "```", ""]
        return "\n".join(out)

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{html.escape(value[1])}</h{value[0]}>")
            elif kind == "para":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
                trs = "".join("<tr>" + "".join(f"<td{_align(c)}>{_inline(_cell(c))}</td>" for c in row)
                              + "</tr>" for row in rows)
                body.append(f"<table><tr>{head}</tr>{trs}</table>")
            elif kind == "figure":
                body.append(f'<figure><img src="{html.escape(value[0])}" alt="{html.escape(value[1])}">'
                            f"<figcaption>{html.escape(value[1])}</figcaption></figure>")
            elif kind == "code":
                body.append(f"<pre>{html.escape(value)}</pre>")
            elif kind == "html":  # trusted markup the caller built (links)
                body.append(value)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}"
                f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")

    def write(self, directory: str | Path, kind: str = "report") -> Path:
        directory = open_report_dir(directory, kind)
        atomic_write_text(directory / "report.md", self.markdown())
        atomic_write_text(directory / "index.html", self.html())
        return directory / "index.html"


def _align(c: Any) -> str:
    """Cells align right (numbers); a cell of prose (an alarm's reason, say) reads better left."""
    return ' class="text"' if isinstance(c, str) and len(c) > 40 else ""


def _md_cell(text: str) -> str:
    """A Markdown table cell: a `|` inside (a choice label such as `int4|kind=hot,ratio=16.0`) would
    start a new column."""
    return str(text).replace("|", "\\|")


def _cell(c: Any) -> str:
    if isinstance(c, float):
        if c != c:
            return "nan"
        return f"{c:#.4g}" if abs(c) < 1e4 else f"{c:,.0f}"  # (#: 0.9590, not 0.959 beside 0.9592)
    if isinstance(c, int):
        return f"{c:,}"
    return str(c)


def _inline(text: str) -> str:
    """Escape, then render `code` spans (the only inline markup the reports use)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def open_report_dir(directory: str | Path, kind: str = "report") -> Path:
    """Claim `directory` for a report (fileio.claim_output: absent, empty or a report), mark it."""
    from lowprec.fileio import MARKER, claim_output

    directory = claim_output(directory, kind, what="report directory")
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / MARKER).exists():
        (directory / MARKER).write_text(kind + "\n")
    return directory


def save_figure(fig: plt.Figure, directory: str | Path, filename: str, kind: str = "report") -> str:
    directory = open_report_dir(directory, kind)
    tmp = directory / f".{filename}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(directory / filename)
    return filename
