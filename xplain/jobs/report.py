"""``index.html``: a folder job's report in one file that needs no network (no scripts, fonts
or styles from elsewhere; the figures are the PNG files beside it, linked by relative path)."""
from __future__ import annotations

import html
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em}
table.meta td{padding:.15em .8em .15em 0;vertical-align:top} code{background:#f3f3f3;padding:0 .3em}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{width:340px;border:1px solid #ddd;border-radius:6px;padding:6px;background:#fafafa}
.card img{width:100%;height:auto;display:block}
.card .cap{font-size:.82em;margin-top:4px;word-break:break-all}
.bad{color:#b00020;font-weight:600}
table.rows{border-collapse:collapse;font-size:.85em;margin-top:.5em}
table.rows td,table.rows th{border:1px solid #ddd;padding:.2em .5em;text-align:left}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def write_report(out: Path, rows: Sequence[Mapping[str, str]], settings: Mapping[str, Any],
                 *, command: str | None, versions: Mapping[str, str], seconds: float) -> Path:
    """Write ``out/index.html`` for ``rows`` (``results.csv``'s) and the job's ``settings``."""
    meta = [("command", f"<code>{_e(command)}</code>" if command else "(Python call)")]
    meta += [(k, _e(v)) for k, v in settings.items()]
    meta += [("versions", _e(", ".join(f"{k} {v}" for k, v in versions.items())
                             + f", Python {platform.python_version()}")),
             ("time", _e(f"{seconds:.1f} s for this run; {len(rows)} rows in results.csv"))]
    cards = []
    for r in rows:
        cons = r.get("conservation", "")
        cons_html = ""
        if cons:
            bad = float(cons) > 1e-3
            cons_html = (f" · conservation error <span class='{'bad' if bad else ''}'>{_e(cons)}"
                         f"</span>")
        name = r.get("class_name") or r.get("target")
        if not r.get("figure"):  # a job run with figures="none"
            continue
        cards.append(
            f"<div class='card'><a href='{quote(r['figure'])}'><img loading='lazy' "
            f"src='{quote(r['figure'])}' alt='{_e(r['image'])}'></a>"
            f"<div class='cap'><b>{_e(r['image'])}</b><br>{_e(name)} (class {_e(r['target'])}), "
            f"p = {_e(r.get('probability', ''))} · {_e(r.get('seconds', ''))} s{cons_html}</div></div>")
    head = ("<tr>" + "".join(f"<th>{_e(c)}</th>" for c in ("image", "target", "class_name", "probability",
                                                           "seconds", "conservation")) + "</tr>")
    body = "".join("<tr>" + "".join(f"<td>{_e(r.get(c, ''))}</td>" for c in
                                    ("image", "target", "class_name", "probability", "seconds",
                                     "conservation")) + "</tr>" for r in rows)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>xplain report: {_e(settings.get('method', ''))}</title><style>{_STYLE}</style>"
            f"</head><body><h1>xplain report: {_e(settings.get('method', ''))} on "
            f"{_e(settings.get('model', ''))}</h1><table class='meta'>"
            + "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in meta)
            + f"</table><h2>Figures ({len(cards)})</h2><p>Each figure: the input as the model saw "
              f"it, the heat map with its colour bar in the attribution's own units, and the "
              f"positive evidence over the input. Files: <a href='results.csv'>results.csv</a>, "
              f"<a href='attributions.npz'>attributions.npz</a>.</p><div class='grid'>"
            + "".join(cards) + f"</div><h2>Table</h2><table class='rows'>{head}{body}</table>"
            + "</body></html>")
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
