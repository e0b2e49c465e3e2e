"""
The report as text for other places: JSON for scripts, Markdown for an incident channel,
a self-contained HTML file to attach or archive.

JSON is the dataclasses of `whodunit.investigate.model` as they are (keys are field
names, in field order; times in ISO 8601 with their offset).  Markdown and HTML put the
answer first, then one section per incident.  Every value from the trail is escaped
(HTML by Jinja's autoescape, Markdown by `_md` and code fences), since a row image or a
query can hold anything, ``<script>`` included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from importlib import resources
from typing import Any

import orjson
from markupsafe import Markup, escape

from whodunit.investigate.model import Incident, Report, format_ts, rows

__all__ = ["to_html", "to_json", "to_markdown"]

_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


def to_json(value: Any) -> str:
    """Render a report, or any model object or list of them, as indented JSON."""
    return orjson.dumps(value, option=_JSON_OPTIONS, default=str).decode()


def to_markdown(report: Report) -> str:
    """Render *report* as Markdown: the answer, then each incident's who/when/what/how/why."""
    out = [
        "# Incident report",
        "",
        f"**{_md(report.answer)}**",
        "",
        f"Window: {report.window.describe()}. "
        f"{report.total} destructive transaction(s); {len(report.incidents)} shown.",
    ]
    for incident in report.incidents:
        out += ["", *_md_incident(incident)]
    return "\n".join(out) + "\n"


def _md_incident(incident: Incident) -> list[str]:
    who, how = incident.who, incident.how
    lines = [
        f"## #{incident.rank}: {_md(incident.headline)}",
        "",
        _md_code(incident.summary),
        "",
        f"- **Who:** {_md(who.summary)}",
        f"- **When:** {incident.when}",
        f"- **Lost:** {rows(incident.rows_lost)}; overwritten: {rows(incident.rows_overwritten)}",
    ]
    request = " ".join(filter(None, (how.request_method, how.request_path)))
    if request or how.correlation_id:
        lines.append(
            f"- **Request:** {_md(request or '-')}, correlation id "
            f"{_md(how.correlation_id or '-')}, trace id {_md(how.trace_id or '-')}"
        )
    lines += ["", "| statement | table | rows | cascaded from |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {s.id} {_md(s.kind)} | {_md(s.table)} | {s.rows:,} | {s.cascaded_from or ''} |"
        for s in incident.statements
    ]
    if how.query:
        lines += ["", "**How (SQL):**", "", *_fenced(how.query, "sql")]
    samples = [row for s in incident.statements for row in s.sample][:5]
    if samples:
        text = "\n".join(json.dumps(row, ensure_ascii=False) for row in samples)
        lines += ["", "**Rows as they were (sample):**", "", *_fenced(text, "json")]
    why = _why_lines(incident)
    if why:
        lines += ["", "**Why:**", "", *(f"- {_md(line)}" for line in why)]
    if incident.prevention:
        lines += ["", "**Would have prevented it:**", ""]
        lines += [f"- {_md_code(p)}" for p in incident.prevention]
    return lines


def _why_lines(incident: Incident) -> list[str]:
    why = incident.why
    return [
        *(f"{format_ts(e.at)} {e.what} {e.target or ''} {e.outcome or ''}" for e in why.logins),
        *(f"{format_ts(e.at)} error before: {e.what} {e.detail or ''}" for e in why.errors_before),
        *(f"{format_ts(e.at)} app event: {e.what} {e.outcome or ''}" for e in why.app_events),
        *(f"{format_ts(line.ts)} {line.level}: {line.message}" for line in why.log_lines),
        *why.notes,
    ]


def _md(text: str) -> str:
    """Escape what Markdown (and the HTML some renderers allow in it) would interpret."""
    for char in "\\`*_[]<>|#":
        text = text.replace(char, "\\" + char)
    return re.sub(r"\s+", " ", text)


def _md_code(text: str) -> str:
    """Escape *text* but keep its `backquoted` commands as code spans."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # a stray backquote: no pairs to trust
        return _md(text)
    return "".join(_md(p) if i % 2 == 0 else f"`{p}`" for i, p in enumerate(parts))


def _fenced(text: str, language: str) -> list[str]:
    fence = "```"
    while fence in text:
        fence += "`"
    return [fence + language, text, fence]


def to_html(report: Report) -> str:
    """Render *report* as one HTML file with inline CSS and no external assets."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["ts"] = format_ts
    env.filters["code"] = _html_code
    env.filters["rows"] = rows
    env.filters["json"] = lambda row: json.dumps(row, ensure_ascii=False, indent=1)
    text = resources.files(__package__).joinpath("templates", "report.html").read_text()
    template = env.from_string(text)
    return template.render(
        report=report,
        why=_why_lines,
        samples=_samples,
    )


def _html_code(text: str) -> Markup:
    """Escape *text*, showing its `backquoted` commands as <code>."""
    parts = text.split("`")
    if len(parts) % 2 == 0:
        return escape(text)
    return Markup("").join(
        escape(p) if i % 2 == 0 else Markup("<code>{}</code>").format(p)
        for i, p in enumerate(parts)
    )


def _samples(incident: Incident) -> Iterable[tuple[str, dict[str, Any]]]:
    return [(s.table, row) for s in incident.statements for row in s.sample][:5]
