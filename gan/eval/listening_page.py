"""HTML of a listening report (``gan.eval.listening``): small templates filled with escaped text.

``render_report``: the summary, the paired comparison and the shifter x metric matrix at
the top, then per example the loudness-matched players, the mel spectrograms and the
metrics with better / worse marked. ``render_blind``: per example the reference and the
two compared versions as "A" and "B", a choice, and a link that saves the answers as JSON
(a Blob; the format is ``gan.eval.listening_results``); per example it holds only the
name, the audio files by letter and a random token, nothing the order could be read from.
CSS and JS are inline; players load nothing until played (``preload="none"``) and images
load when scrolled to (``loading="lazy"``), so a page of a few hundred examples opens at once.
"""
from __future__ import annotations

import json
import math
from html import escape

from gan.eval.listening_results import FORMAT, VERSION
from gan.eval.metrics import HIGHER_IS_BETTER
from gan.eval.report import (LEVEL_CAPTION, LEVEL_HEAD, level_rows, matrix_caption, matrix_cell, matrix_columns,
                             shifter_name)

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body>
<h1>{title}</h1>
{body}
<script>{js}</script>
</body></html>
"""
CSS = """body{font:14px/1.45 system-ui,sans-serif;color:#222;max-width:1250px;margin:1.5em auto;padding:0 1em}
table{border-collapse:collapse;margin:.4em 0 1em}th,td{padding:2px 9px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}.note{color:#666}
.better{color:#0a7a27;font-weight:600}.worse{color:#b3261e;font-weight:600}
section.ex{border-top:2px solid #ccc;margin-top:1.4em}audio{height:34px;width:340px;vertical-align:middle}
img.spec{max-width:100%;height:auto;display:block}fieldset{display:inline-block;border:1px solid #bbb}
label{margin-right:1.2em}#save{font-size:15px;padding:.4em 1em}"""
JS_PLAYERS = """document.addEventListener('play', e => {
  for (const a of document.querySelectorAll('audio')) if (a !== e.target) a.pause();
}, true);"""
JS_BLIND = """
const data = JSON.parse(document.getElementById('blind-data').textContent);
function answers() {
  return {format: data.format, version: data.version, report_id: data.report_id,
    listener: document.getElementById('listener').value, saved: new Date().toISOString(),
    answers: data.examples.map(e => {
      const c = document.querySelector('input[name="q' + e.example + '"]:checked');
      return {example: e.example, name: e.name, token: e.token, answer: c ? c.value : null};
    })};
}
document.addEventListener('change', () => {
  const n = answers().answers.filter(a => a.answer !== null).length;
  document.getElementById('progress').textContent = n + ' of ' + data.examples.length + ' answered';
});
document.getElementById('save').addEventListener('click', () => {
  const blob = new Blob([JSON.stringify(answers(), null, 1)], {type: 'application/json'});
  const link = document.getElementById('download');
  link.href = URL.createObjectURL(blob);
  link.download = 'listening-' + data.report_id + '.json';
  link.click();
});"""
PLAYER = '<tr><td>{label}</td><td><audio controls preload="none" src="{src}"></audio></td>{extra}</tr>'
EXAMPLE = """<section class="ex" id="ex{k}">
<h3>{k}. {name} <span class="note">({seconds} s)</span></h3>
<p class="note">{loudness}</p>
<table>{players}</table>
{rest}
</section>"""
CHOICE = """<fieldset><legend>Closer to the reference:</legend>
<label><input type="radio" name="q{k}" value="A"> A</label><label><input type="radio" name="q{k}" value="B"> B</label>
<label><input type="radio" name="q{k}" value="none"> no difference</label></fieldset>"""


def _num(x, fmt: str = ".4g") -> str:
    return "nan" if x is None or not math.isfinite(x) else format(x, fmt)


def _row(cells, head: bool = False, classes=None) -> str:
    """One table row; ``cells`` are plain text (escaped here), ``classes`` an optional CSS class per cell."""
    tag = "th" if head else "td"
    out = []
    for v, c in zip(cells, classes or [""] * len(cells)):
        attr = f' class="{escape(c)}"' if c else ""
        out.append(f"<{tag}{attr}>{escape(str(v))}</{tag}>")
    return "<tr>" + "".join(out) + "</tr>"


def _table(head, rows, classes=None) -> str:
    body = [_row(r, classes=c) for r, c in zip(rows, classes or [None] * len(rows))]
    return "<table>" + _row(head, head=True) + "".join(body) + "</table>"


def describe(version: str, report: dict) -> str:
    """``"enhanced A"`` -> ``"enhanced A: runs/demo (step 500)"``; other versions unchanged."""
    if version.startswith("enhanced "):
        info = report["checkpoints"][version.split()[1]]
        return f"{version}: {info['path']} (step {info['step']})"
    return version


def spoken(version: str, report: dict) -> str:
    """How the blind page names a version, free of the letters A and B it uses for the blind order."""
    if version.startswith("enhanced "):
        info = report["checkpoints"][version.split()[1]]
        return f"the output of {info['path']} (step {info['step']})"
    return "the degraded input"


def loudness_line(e: dict, meta: dict) -> str:
    if e["lowered"]:
        return (f"Every version plays at {e['target']:.1f} LUFS, lowered from {meta['target']:g} LUFS so that no "
                f"version's peak exceeds {meta['ceiling']:g} dBFS.")
    return f"Every version plays at {e['target']:.1f} LUFS."


def _header(report: dict, examples: list[dict], meta: dict) -> str:
    ck = _table(["checkpoint", "path", "step", "generator"],
                [[lab, c["path"], c["step"], c["generator"]] for lab, c in report["checkpoints"].items()])
    return (f"<p>data: {escape(str(report['data']))} &middot; {len(examples)} examples &middot; report id "
            f"<code>{escape(meta['report_id'])}</code></p>\n<p><b>Loudness-matched playback:</b> every version of "
            f"an example is scaled to the same integrated loudness, {meta['target']:g} LUFS (ITU-R BS.1770), so "
            f"louder never sounds better by accident; nothing clips: where a peak would exceed {meta['ceiling']:g} "
            "dBFS the whole example plays quieter, and its section says so. So the <b>gain-matched input</b> (the "
            "degraded input scaled by one gain per file to the clean reference's energy) would sound exactly like "
            "the degraded input: it has no player, only its metrics, which show what level alone buys.</p>\n" + ck)


MARKS = {"better": " +", "worse": " -"}


def _compare(title: str, compare: dict) -> str:
    rows, classes = [], []
    for m, c in compare.items():
        rows.append([m, _num(c["mean_a"]), _num(c["mean_b"]), _num(c["mean_diff"], "+.4g"),
                     f"[{_num(c['ci95'][0])}, {_num(c['ci95'][1])}]", _num(c["t_p"], ".3g"),
                     _num(c["wilcoxon_p"], ".3g"), c["better"]])
        classes.append([""] * 7 + ["better" if c["better"] in ("a", "b") else ""])
    return f"<h3>{escape(title)}</h3>" + _table(
        ["metric", "mean A", "mean B", "B - A", "95% CI", "t-test p", "Wilcoxon p", "better"], rows, classes)


def _summary(report: dict) -> str:
    parts = ["<h2>Summary</h2><p class=\"note\">Means over the examples, of the unscaled audio; verdict: one-sided "
             "paired Wilcoxon test, p &lt; 0.01.</p>"]
    for lab in report["checkpoints"]:
        rows, classes = [], []
        for m in report["metrics"]:
            s, v = report["summary"][lab], report["verdict"][lab][m]
            rows.append([m, "higher" if HIGHER_IS_BETTER[m] else "lower", _num(s[f"{m}_degraded"]["mean"]),
                         _num(s[f"{m}_enhanced"]["mean"]), _num(s[f"{m}_improvement"]["mean"], "+.4g"),
                         f"{v['verdict']} (p better {_num(v['p_better'], '.3g')}, worse {_num(v['p_worse'], '.3g')})"])
            cls = {"better": "better", "worse": "worse"}.get(v["verdict"], "")
            classes.append(["", "", "", "", cls, cls])
        parts.append(f"<h3>checkpoint {escape(lab)}</h3>" + _table(
            ["metric", "better is", "degraded", "enhanced", "improvement", "verdict"], rows, classes))
        notes = dict.fromkeys(v["note"] for v in report["verdict"][lab].values() if v.get("note"))
        parts += [f"<p class=\"note\">{escape(n)}</p>" for n in notes]
        level = level_rows(report, lab)
        parts.append(f"<p class=\"note\">{escape(LEVEL_CAPTION)}; + / -: one-sided paired Wilcoxon p &lt; 0.01 "
                     "better / worse.</p>" + _table(
                         ["metric", *LEVEL_HEAD], [[m, *cells[:-1], cells[-1] + MARKS.get(word, "")]
                                                   for m, cells, word in level],
                         [[""] * 6 + [word if word in MARKS else ""] for _, _, word in level]))
    if "compare" in report:
        parts.append(_compare("paired comparison of the enhanced scores, B - A", report["compare"]))
        parts.append(_compare("paired comparison of the gain-matched enhanced scores, B - A",
                              report["compare_matched"]))
    for lab, cells in report.get("matrix", {}).items():
        columns = matrix_columns(report["metrics"])
        rows, classes = [], []
        for c in cells:
            row, cls = [shifter_name(c), c["shift"], c["n"]], []
            for m, kind in columns:
                text, mark = matrix_cell(c["metrics"][m], kind)
                row.append(f"{text} {mark}".strip())
                cls.append({"+": "better", "-": "worse"}.get(mark, ""))
            rows.append(row)
            classes.append(["", "", "", *cls])
        parts.append(f"<h3>shifter &times; metric matrix, checkpoint {escape(lab)}</h3><p class=\"note\">"
                     f"{escape(matrix_caption(report['metrics']))}.</p>"
                     + _table(["shifter", "shift", "n", *(f"{m} {k}".strip() for m, k in columns)], rows, classes))
    for m, why in report.get("skipped_metrics", {}).items():
        parts.append(f"<p class=\"note\">{escape(m)} skipped: {escape(why)}</p>")
    return "\n".join(parts)


def _changes(values: list[float]) -> tuple[list[str], list[str]]:
    """Signed improvements -> (texts with ▲ / ▼, CSS classes)."""
    marks = ["better" if i > 0 else "worse" if i < 0 else "" for i in values]
    return ([f"{_num(i, '+.4g')} {'▲ better' if k == 'better' else '▼ worse' if k == 'worse' else ''}"
             for i, k in zip(values, marks)], marks)


def _metrics(e: dict, report: dict) -> str:
    """An example's metrics: the input, each output and its change, and the level-matched baselines: the gain-matched
    input and each gain-matched output's change against it (beyond level)."""
    labels = [r["checkpoint"] for r in e["rows"]]
    head = ["metric", "degraded", *(f"enhanced {lab}" for lab in labels), *(f"{lab} change" for lab in labels),
            "gain-matched input", *(f"{lab} beyond level" for lab in labels)]
    rows, classes = [], []
    for m in report["metrics"]:
        change, marks = _changes([r[f"{m}_improvement"] for r in e["rows"]])
        beyond, beyond_marks = _changes([r[f"{m}_beyond_level"] for r in e["rows"]])
        direction = "higher" if HIGHER_IS_BETTER[m] else "lower"
        rows.append([f"{m} ({direction} is better)", _num(e["rows"][0][f"{m}_degraded"]),
                     *(_num(r[f"{m}_enhanced"]) for r in e["rows"]), *change,
                     _num(e["rows"][0][f"{m}_degraded_matched"]), *beyond])
        classes.append(["", "", *marks, *marks, "", *beyond_marks])
    gain = e["rows"][0]["input_gain"]
    return (_table(head, rows, classes) + f"<p class=\"note\">oracle gain of the input: {_num(gain, '.3g')} "
            f"({_num(20 * math.log10(gain), '+.1f')} dB)</p>")


def render_report(report: dict, examples: list[dict], meta: dict) -> str:
    """The full page: header, summary tables, then every example."""
    sections = []
    for e in examples:
        players = "<tr><th>version</th><th>player</th><th>as scored</th><th>gain</th></tr>" + "".join(
            PLAYER.format(label=escape(a["version"]), src=escape(a["src"]),
                          extra=f"<td>{escape(_num(a['lufs'], '.1f'))} LUFS</td>"
                                f"<td>{escape(_num(a['gain_db'], '+.1f'))} dB</td>")
            for a in e["audio"].values())
        image = (f'<img class="spec" loading="lazy" src="{escape(e["image"])}" '
                 f'alt="{escape("mel spectrograms of " + e["name"])}">')
        sections.append(EXAMPLE.format(k=e["k"], name=escape(e["name"]), seconds=f"{e['seconds']:.1f}",
                                       loudness=escape(loudness_line(e, meta)), players=players,
                                       rest=image + "\n" + _metrics(e, report)))
    body = _header(report, examples, meta) + "\n" + _summary(report) + "\n<h2>Examples</h2>\n" + "\n".join(sections)
    return PAGE.format(title="unshift listening report", css=CSS, body=body, js=JS_PLAYERS)


def _script_json(obj) -> str:
    """JSON safe inside ``<script>``: no ``<``, ``>`` or ``&`` left to end the element."""
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_blind(report: dict, examples: list[dict], meta: dict) -> str:
    """The blind page: per example reference, A, B and a choice; answers saved as JSON. Shows no metrics.

    Reads of each example only ``k``, ``name``, ``seconds``, ``target``, ``lowered``, the
    audio files' ``src`` and ``token``; of X and Y only what they are, in a fixed order.
    """
    data = {"format": FORMAT, "version": VERSION, "report_id": meta["report_id"],
            "examples": [{"example": e["k"], "name": e["name"], "token": e["token"]} for e in examples]}
    sections = []
    for e in examples:
        players = "".join(PLAYER.format(label=label, src=escape(e["audio"][tag]["src"]), extra="")
                          for tag, label in (("ref", "reference (clean)"), ("a", "A"), ("b", "B")))
        sections.append(EXAMPLE.format(k=e["k"], name=escape(e["name"]), seconds=f"{e['seconds']:.1f}",
                                       loudness=escape(loudness_line(e, meta)), players=players,
                                       rest=CHOICE.format(k=e["k"])))
    intro = (f"<p>For each example, listen to the reference, then to A and B, and choose the one closer to the "
             f"reference (or no difference). One of A and B is <b>{escape(spoken(examples[0]['x'], report))}</b>, "
             f"the other <b>{escape(spoken(examples[0]['y'], report))}</b>; "
             "which is which is drawn at random for each example. Every version of an example plays at the same "
             f"integrated loudness ({meta['target']:g} LUFS, ITU-R BS.1770, lower where a peak would exceed "
             f"{meta['ceiling']:g} dBFS), so loudness gives nothing away. When done, download your answers and "
             f"send the file back. Report id <code>{escape(meta['report_id'])}</code>.</p>\n"
             '<p><label>Your name (optional) <input id="listener" type="text"></label> '
             f'<span id="progress" class="note">0 of {len(examples)} answered</span></p>')
    save = ('<p><button id="save" type="button">Download answers (JSON)</button><a id="download" hidden></a></p>\n'
            f'<script type="application/json" id="blind-data">{_script_json(data)}</script>')
    body = intro + "\n" + "\n".join(sections) + "\n" + save
    return PAGE.format(title="unshift blind listening test", css=CSS, body=body, js=JS_PLAYERS + JS_BLIND)
