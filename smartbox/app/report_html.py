"""The transparency report as one self-contained HTML page: inline CSS and SVG, no script, no
external asset, so it can be mailed, archived and opened offline years later.

Every bar of every plot is an SVG ``rect`` with ``data-series``, ``data-day`` and
``data-value`` attributes (and a ``title`` for hovering), so the plotted numbers can be read
back from the page and checked against the table.
"""

from __future__ import annotations

from datetime import date
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import DayCounts, TrustReport

SERIES = {
    "received": ("Received", "#4e79a7"),
    "staged": ("De-identified", "#59a14f"),
    "held": ("Held back", "#e15759"),
    "exported": ("Exported", "#f28e2b"),
    "acknowledged": ("Acknowledged", "#76b7b2"),
}
OPTION_LABELS = {
    "retain_safe_private": "Retain Safe Private Option",
    "retain_uids": "Retain UIDs Option",
    "retain_device_identity": "Retain Device Identity Option",
    "retain_institution_identity": "Retain Institution Identity Option",
    "retain_patient_characteristics": "Retain Patient Characteristics Option",
    "retain_longitudinal_full_dates": "Retain Longitudinal Temporal Information Full Dates Option",
    "retain_longitudinal_modified_dates": (
        "Retain Longitudinal Temporal Information Modified Dates Option"
    ),
    "clean_descriptors": "Clean Descriptors Option",
    "clean_structured_content": "Clean Structured Content Option",
    "clean_graphics": "Clean Graphics Option",
}
#: Table E.1-1 actions after compilation (consumers.deid.table), as a governance lead reads them
ACTION_LABELS = {
    "X": "Removed",
    "Z": "Replaced with an empty value",
    "D": "Replaced with a non-identifying dummy value",
    "U": "Replaced with a keyed pseudonymous UID",
    "C": "Cleaned: dates shifted per patient, free text kept only if free of identifiers",
    "K": "Kept (dates inside still shifted, UIDs inside still replaced)",
}
REASON_LABELS = {
    "burned_in_annotation": "the instance says its pixels carry burned-in text",
    "recognizable_visual_features": "the image may show recognisable features (e.g. a face)",
    "modality_not_allowed": "a modality that commonly burns text into pixels (US, SC, OT, ...)",
    "sop_class_not_allowed": "secondary capture, screen capture or dose report",
    "image_type_screen_save": "a screen save",
    "image_type_dose_report": "a dose report image",
    "image_type_secondary": "a secondary (derived) image",
    "device_burns_in_text": "a device known to burn in text, with no mask rule for it",
    "verification_failed": "the independent check found an identifying value in the output",
    "unparseable": "not a readable DICOM instance",
    "deid_error": "the de-identifier could not process it",
    "mask_rule_unsupported": "a mask rule matched but cannot be applied to this image",
    "mask_rule_compressed": "a mask rule matched but the pixels are compressed",
}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 color:#1d2330;margin:0;background:#f5f6f8}
main{max-width:1000px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:2px solid
 #dde1e7;padding-bottom:4px}h3{font-size:15px;margin:20px 0 6px}
.sub{color:#5a6473;margin:0 0 16px}.note{color:#5a6473;font-size:12.5px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{flex:1 1 100px;border:1px solid #dde1e7;border-radius:6px;padding:10px 12px}
.card b{display:block;font-size:24px}.card span{color:#5a6473;font-size:12.5px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-size:13px}
th,td{border-bottom:1px solid #e6e9ee;padding:4px 8px;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
#daily td:first-child{white-space:nowrap}
thead th{background:#f0f2f5}tr.total td{font-weight:600;border-top:2px solid #c9ced6}
table.attrs{font-size:12px}table.attrs td:first-child{font-family:monospace;white-space:nowrap}
svg{display:block;margin:8px 0 4px}svg text{font:11px system-ui,"DejaVu Sans",sans-serif;
 fill:#3b4352}.axis{stroke:#9aa3b0;stroke-width:1}.grid{stroke:#eceff3;stroke-width:1}
@media print{body{background:#fff}main{padding:0}h2{break-after:avoid}}
"""


def _n(value: int) -> str:
    return f"{value:,}"


def _nice_max(value: int) -> int:
    """A round axis maximum at or above ``value``: 4 grid steps of 1, 2 or 5 x 10^k."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step * 4 >= value:
                return m * step * 4
        step *= 10


def bar_chart(
    chart_id: str, title: str, days: list[date], series: list[tuple[str, list[int]]]
) -> str:
    """Grouped bars per day, one colour per series, with axis, grid, legend and tooltips."""
    width, height, left, right, top, bottom = 936, 260, 48, 12, 34, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = _nice_max(max((v for _s, vals in series for v in vals), default=0))
    group_w = plot_w / max(len(days), 1)
    bar_w = max(group_w * 0.8 / max(len(series), 1), 0.5)
    out = [
        f'<svg id="{chart_id}" class="chart" role="img" aria-label="{escape(title)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        value = top_value * i // 4
        y = top + plot_h - plot_h * i / 4
        out.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_n(value)}</text>')
    out.append(
        f'<line class="axis" x1="{left}" x2="{width - right}" y1="{top + plot_h}" '
        f'y2="{top + plot_h}"/>'
    )
    label_every = max(1, -(-len(days) // 14))
    for d_index, day in enumerate(days):
        x0 = left + group_w * d_index + group_w * 0.1
        for s_index, (key, values) in enumerate(series):
            label, colour = SERIES[key]
            value = values[d_index]
            h = plot_h * value / top_value
            x = x0 + bar_w * s_index
            out.append(
                f'<rect class="bar" data-series="{key}" data-day="{day.isoformat()}" '
                f'data-value="{value}" x="{x:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{bar_w:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{escape(label)} {day.isoformat()}: {_n(value)}</title></rect>"
            )
        if d_index % label_every == 0:
            cx = left + group_w * (d_index + 0.5)
            out.append(
                f'<text x="{cx:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                f"{day.strftime('%d %b')}</text>"
            )
    lx = left
    for key, _values in series:
        label, colour = SERIES[key]
        out.append(
            f'<rect x="{lx}" y="8" width="12" height="12" fill="{colour}"/>'
            f'<text x="{lx + 16}" y="18">{escape(label)}</text>'
        )
        lx += 30 + 7 * len(label)
    out.append("</svg>")
    return "".join(out)


def reason_chart(reasons: list[tuple[str, int]]) -> str:
    """Horizontal bars: instances held back per reason over the period."""
    if not reasons:
        return '<p class="note" id="held-chart-empty">Nothing was held back in this period.</p>'
    width, row_h, left = 936, 24, 300
    height = 12 + row_h * len(reasons)
    top_value = _nice_max(max(n for _r, n in reasons))
    out = [
        f'<svg id="held-chart" class="chart" role="img" aria-label="Held back by reason" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'xmlns="http://www.w3.org/2000/svg"><title>Held back by reason</title>'
    ]
    for i, (reason, n) in enumerate(reasons):
        y = 6 + i * row_h
        w = (width - left - 80) * n / top_value
        out.append(
            f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(reason)}</text>'
            f'<rect class="bar" data-series="held" data-reason="{escape(reason)}" '
            f'data-value="{n}" x="{left}" y="{y + 3}" width="{w:.1f}" height="16" '
            f'fill="{SERIES["held"][1]}"><title>{escape(reason)}: {_n(n)}</title></rect>'
            f'<text x="{left + w + 6:.1f}" y="{y + 15}">{_n(n)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _reason_label(reason: str) -> str:
    return REASON_LABELS.get(reason, REASON_LABELS.get(reason.split(":", 1)[0], ""))


def _daily_table(report: TrustReport) -> str:
    cols = [
        ("Studies received", "received_studies"),
        ("Instances received", "received_instances"),
        ("Studies de-identified", "staged_studies"),
        ("Instances de-identified", "staged_instances"),
        ("Instances held back", "held_instances"),
        ("Studies exported", "exported_studies"),
        ("Instances exported", "exported_instances"),
        ("Instances acknowledged", "acknowledged_instances"),
    ]
    head = "".join(f'<th class="n">{escape(c)}</th>' for c, _a in cols)
    rows = []

    def row(label: str, d: DayCounts, css: str = "") -> str:
        cells = "".join(f'<td class="n">{_n(getattr(d, a))}</td>' for _c, a in cols)
        return f'<tr class="{css}"><td>{escape(label)}</td>{cells}</tr>'

    for day, d in report.days:
        rows.append(row(day.strftime("%a %d %b %Y"), d))
    rows.append(row("Period", report.totals, "total"))
    return (
        f'<table id="daily"><thead><tr><th>Day</th>{head}</tr></thead><tbody>'
        f"{''.join(rows)}</tbody></table>"
    )


def _profile_section(report: TrustReport) -> str:
    out = []
    if report.profiles:
        out.append(
            '<table id="profiles"><thead><tr><th>Profile</th><th>Options</th>'
            "<th>Annex E table edition</th><th>Key version</th><th>Software</th>"
            '<th class="n">Batches</th></tr></thead><tbody>'
        )
        for p, batches in report.profiles:
            opts = "<br>".join(escape(OPTION_LABELS.get(o, o)) for o in p.options) or "none"
            out.append(
                f"<tr><td>{escape(p.profile)}</td><td>{opts}</td>"
                f"<td>{escape(p.table_edition)}</td><td>{escape(p.key_version)}</td>"
                f'<td>smartbox {escape(p.code_version)}</td><td class="n">{batches}</td>'
                "</tr>"
            )
        out.append("</tbody></table>")
        if len(report.profiles) > 1:
            out.append(
                '<p class="note">More than one configuration was in force during the '
                "period; each row counts the study batches it was applied to.</p>"
            )
    else:
        out.append('<p class="note">No study was de-identified in this period.</p>')
    if report.configured_options is not None:
        opts = ", ".join(OPTION_LABELS.get(o, o) for o in report.configured_options) or "none"
        out.append(
            f"<p>Configured for this trust now: DICOM PS3.15 Annex E Basic Application "
            f"Level Confidentiality Profile with {escape(opts)}.</p>"
        )
    return "".join(out)


def _attributes_section(report: TrustReport) -> str:
    out = [
        "<p>What the profile does to each attribute that PS3.15 Table E.1-1 names, compiled "
        "by the same code that de-identifies. Anything the table does not name is removed "
        "by default (private attributes too, unless the Retain Safe Private Option allows "
        "them), and every output is parsed back and checked for the source's identifying "
        "values before it may be staged.</p>"
    ]
    for options, by_action in report.attributes:
        if len(report.attributes) > 1:
            label = ", ".join(OPTION_LABELS.get(o, o) for o in options) or "no options"
            out.append(f"<h3>With {escape(label)}</h3>")
        summary = "".join(
            f"<li>{escape(ACTION_LABELS.get(a, a))}: {len(rows)}</li>"
            for a, rows in by_action.items()
        )
        out.append(f'<ul class="action-summary">{summary}</ul>')
        for action, rows in by_action.items():
            if action == "K":
                continue  # what is kept is not removed or replaced; the count is listed above
            body = "".join(
                f"<tr><td>{escape(r.tag)}</td><td>{escape(r.keyword)}</td>"
                f"<td>{escape(r.name)}</td></tr>"
                for r in rows
            )
            out.append(
                f"<h3>{escape(ACTION_LABELS.get(action, action))} "
                f"({len(rows)})</h3>"
                f'<table class="attrs" data-action="{action}"><thead><tr><th>Tag</th>'
                f"<th>Keyword</th><th>Name</th></tr></thead><tbody>{body}</tbody></table>"
            )
    return "".join(out)


def _clinical_section(report: TrustReport) -> str:
    """Clinical records of the period: rows the trust submitted, accepted and held back (by
    reason), and the record versions staged, exported and acknowledged."""
    c = report.clinical
    if c is None or not (c.rows or c.staged):
        return ""
    rows = [
        ("Rows submitted", c.rows),
        ("Rows accepted", c.accepted),
        ("Rows held back", c.held_back),
        ("Records staged", c.staged),
        ("Records exported", c.exported),
        ("Records acknowledged", c.acknowledged),
        ("Records awaiting export", c.pending),
        ("Records set aside after repeated national rejection", c.failed),
        ("Records withdrawn", c.withdrawn),
    ]
    body = "".join(
        f'<tr><td>{escape(label)}</td><td class="n">{_n(n)}</td></tr>' for label, n in rows
    )
    reasons = "".join(
        f'<tr><td>{escape(r)}</td><td class="n">{_n(n)}</td></tr>'
        for r, n in sorted(c.held_back_reasons.items(), key=lambda rn: (-rn[1], rn[0]))
    )
    return (
        "<h2>Clinical records</h2>"
        "<p>Clinical data the trust submitted for the national database (swab results, "
        "admission, outcome), pseudonymised like the images. A row that fails a check is held "
        "back and never leaves the box; an unchanged row submitted again is not staged twice.</p>"
        f'<table id="clinical"><tbody>{body}</tbody></table>'
        + (
            '<table id="clinical-reasons"><thead><tr><th>Held back because</th>'
            f'<th class="n">Rows</th></tr></thead><tbody>{reasons}</tbody></table>'
            if reasons
            else ""
        )
    )


def render(report: TrustReport) -> str:
    """The whole page."""
    t = report.totals
    days = [d for d, _c in report.days]
    counts = [c for _d, c in report.days]
    cards = [
        ("Studies received", t.received_studies),
        ("Instances received", t.received_instances),
        ("Instances de-identified", t.staged_instances),
        ("Instances held back", t.held_instances),
        ("Instances exported", t.exported_instances),
        ("Instances acknowledged", t.acknowledged_instances),
    ]
    reasons = sorted(t.held_by_reason.items(), key=lambda rn: (-rn[1], rn[0]))
    reason_rows = "".join(
        f'<tr><td>{escape(r)}</td><td>{escape(_reason_label(r))}</td><td class="n">{_n(n)}</td>'
        "</tr>"
        for r, n in reasons
    )
    state = (
        f"{_n(report.awaiting_deidentification)} study batch(es) awaiting de-identification, "
        f"{_n(report.awaiting_export)} awaiting export, "
        f"{_n(report.awaiting_acknowledgement)} exported and awaiting acknowledgement, "
        f"{_n(report.set_aside)} set aside after repeated national rejection, "
        f"{_n(report.withdrawn)} withdrawn"
    )
    title = f"Transparency report: {report.name} ({report.code})"
    period = f"{report.start:%d %B %Y} to {report.end:%d %B %Y}"
    parts = [
        '<!DOCTYPE html><html lang="en-GB"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}, {escape(period)}</title><style>{CSS}</style></head>",
        "<body><main>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(period)} (days in {escape(report.timezone)}) · generated '
        f"{escape(report.generated_at)} · counts only: this report holds no patient data</p>",
        '<div class="cards" id="totals">',
        *(f'<div class="card"><b>{_n(v)}</b><span>{escape(k)}</span></div>' for k, v in cards),
        "</div>",
        f'<p id="state">Now: {escape(state)}.</p>',
        "<h2>Per day</h2>",
        "<h3>Studies per day</h3>",
        bar_chart(
            "studies-chart",
            "Studies per day",
            days,
            [
                ("received", [c.received_studies for c in counts]),
                ("staged", [c.staged_studies for c in counts]),
                ("exported", [c.exported_studies for c in counts]),
            ],
        ),
        "<h3>Instances per day</h3>",
        bar_chart(
            "instances-chart",
            "Instances per day",
            days,
            [
                ("received", [c.received_instances for c in counts]),
                ("staged", [c.staged_instances for c in counts]),
                ("held", [c.held_instances for c in counts]),
                ("exported", [c.exported_instances for c in counts]),
                ("acknowledged", [c.acknowledged_instances for c in counts]),
            ],
        ),
        _daily_table(report),
        "<h2>Held back, by reason</h2>",
        "<p>Instances that could not be shown to be free of identifying information are held "
        "back: they stay inside the hospital network and are never exported.</p>",
        reason_chart(reasons),
        (
            f'<table id="reasons"><thead><tr><th>Reason</th><th>Meaning</th><th class="n">'
            f"Instances</th></tr></thead><tbody>{reason_rows}</tbody></table>"
            if reasons
            else ""
        ),
        _clinical_section(report),
        "<h2>De-identification applied</h2>",
        _profile_section(report),
        "<h2>Attributes removed or replaced</h2>",
        _attributes_section(report),
        "<h2>How these numbers are made</h2>",
        '<p class="note">From the records smartbox keeps in its own object storage: the '
        "receiver's batch manifests (received), the anonymiser's study manifests (de-identified "
        "and held back) and the exporter's record of each study (exported: when last sent; "
        "acknowledged: when the national side accepted it). A manifest's day is the day it was "
        "written. Received counts for days whose identifiable originals have passed retention "
        "come from the study manifests. A study counts once per day and once in the period "
        "(an amendment is the same study). Clinical records: from each submission's report "
        "(rows accepted and held back, on the day it was staged) and each record version's "
        "export state (staged, exported, acknowledged). "
        f"Unreadable records skipped: {_n(report.skipped_records)}.</p>",
        "</main></body></html>",
    ]
    return "\n".join(parts)
