"""Answers of a blind listening test (``gan.eval.listening``): unblinding and the preference table.

A blind report plays, per example, two versions X and Y (the degraded input and a
checkpoint's output, or the outputs of checkpoints A and B) as "A" and "B" in a random
order, and asks which is closer to the clean reference. The listener's page saves an
answers file (JSON):

    {"format": "unshift-listening-answers", "version": 1, "report_id": "3f9c0a51d2e4",
     "x": "degraded", "y": "enhanced A: runs/demo (step 500)", "listener": "...", "saved": "...",
     "answers": [{"example": 1, "name": "f0.wav torchaudio +12", "key": "9b1c...", "answer": "A"}, ...]}

``answer`` is ``"A"``, ``"B"``, ``"none"`` (no difference) or null (not answered). ``key``
is ``blind_key(report_id, example, order)`` for the order the page used (``"xy"``: A was
X), so a file unblinds offline and a key from another report or an edited file is refused.

    table = preference_table(["alice.json", "bob.json"]); print(format_preferences(table))

Per comparison (X, Y): answers, how many prefer X, prefer Y, hear no difference, and the
two-sided sign test (``scipy.stats.binomtest``, p = 1/2) on the decided answers.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from gan.errors import UnshiftError

FORMAT = "unshift-listening-answers"
VERSION = 1
ORDERS = ("xy", "yx")  # "xy": A plays X and B plays Y
CHOICES = ("A", "B", "none")
ALPHA = 0.05


class ListeningResultsError(UnshiftError, ValueError):
    """An answers file that is not JSON, not from a blind report, or edited."""


def blind_key(report_id: str, example: int, order: str) -> str:
    """The key a blind page stores for ``example`` shown in ``order``: 16 hex digits of SHA-256."""
    return hashlib.sha256(f"{report_id}/{example}/{order}".encode()).hexdigest()[:16]


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise ListeningResultsError(f"answers {path}: {what}; give a file saved by a blind report's download link")


def read_answers(path: str | Path) -> dict:
    """One answers file, checked field by field. Raises ``ListeningResultsError``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ListeningResultsError(f"answers {path}: cannot be read ({e.strerror}); check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ListeningResultsError(f"answers {path}: not JSON ({str(e).splitlines()[0]}); give a file saved by a "
                                    "blind report's download link") from None
    _need(isinstance(doc, dict) and doc.get("format") == FORMAT, path, f"not a listening-test answers file "
                                                                       f"(no \"format\": \"{FORMAT}\")")
    _need(doc.get("version") == VERSION, path, f"version {doc.get('version')!r}, this reader knows {VERSION}")
    for field in ("report_id", "x", "y"):
        _need(isinstance(doc.get(field), str) and doc[field] != "", path, f"'{field}' is missing or not a string")
    _need(isinstance(doc.get("answers"), list), path, "'answers' is missing or not a list")
    for i, a in enumerate(doc["answers"]):
        _need(isinstance(a, dict) and isinstance(a.get("example"), int) and isinstance(a.get("key"), str),
              path, f"answer {i} has no integer 'example' and string 'key'")
        _need(a.get("answer") in (*CHOICES, None), path,
              f"example {a['example']}: answer {a.get('answer')!r} is not one of A, B, none or null")
    return doc


def unblind(doc: dict, path: str | Path = "answers") -> list[str]:
    """Each answered example's preference: ``"x"``, ``"y"`` or ``"none"`` (unanswered ones left out)."""
    out = []
    for a in doc["answers"]:
        order = next((o for o in ORDERS if blind_key(doc["report_id"], a["example"], o) == a["key"]), None)
        if order is None:
            raise ListeningResultsError(f"answers {path}: example {a['example']}: its key does not belong to report "
                                        f"{doc['report_id']}; the file was edited or mixes reports")
        if a["answer"] is None:
            continue
        if a["answer"] == "none":
            out.append("none")
        else:  # "A" is X when the order is "xy"
            out.append("x" if (a["answer"] == "A") == (order == "xy") else "y")
    return out


def preferences(choices: list[str], alpha: float = ALPHA) -> dict:
    """Counts of ``"x"`` / ``"y"`` / ``"none"`` and the two-sided sign test on the decided ones.

    ``p`` is NaN when no answer is decided; ``preferred`` is ``"x"``, ``"y"`` or ``"neither"``
    (p >= alpha, or no decided answers).
    """
    from scipy.stats import binomtest

    n_x, n_y, n_none = (sum(c == k for c in choices) for k in ("x", "y", "none"))
    decided = n_x + n_y
    p = float(binomtest(n_y, decided, 0.5, alternative="two-sided").pvalue) if decided else math.nan
    preferred = ("y" if n_y > n_x else "x") if decided and p < alpha else "neither"
    return {"n": len(choices), "prefers_x": n_x, "prefers_y": n_y, "no_difference": n_none, "p": p,
            "preferred": preferred, "alpha": alpha}


def preference_table(paths: list[str | Path], alpha: float = ALPHA) -> list[dict]:
    """Read, check and unblind answers files; one row per comparison (X, Y), in order of first appearance."""
    pooled: dict[tuple[str, str], dict] = {}
    for path in paths:
        doc = read_answers(path)
        entry = pooled.setdefault((doc["x"], doc["y"]), {"files": 0, "reports": set(), "choices": []})
        entry["files"] += 1
        entry["reports"].add(doc["report_id"])
        entry["choices"] += unblind(doc, path)
    return [{"x": x, "y": y, "files": e["files"], "reports": sorted(e["reports"]), **preferences(e["choices"], alpha)}
            for (x, y), e in pooled.items()]


def verdict_line(row: dict) -> str:
    """One line: which version listeners preferred, or that they did not significantly prefer either."""
    decided = row["prefers_x"] + row["prefers_y"]
    if not decided:
        return f"verdict: no decided answers ({row['no_difference']} of {row['n']} hear no difference)"
    test = (f"{max(row['prefers_x'], row['prefers_y'])} of {decided} decided answers, two-sided sign test "
            f"p = {row['p']:.4g}")
    if row["preferred"] == "neither":
        return f"verdict: no significant preference ({test} >= {row['alpha']:g})"
    winner, loser = ("Y", "X") if row["preferred"] == "y" else ("X", "Y")
    return (f"verdict: listeners prefer {winner} ({row[winner.lower()]}) over {loser} ({row[loser.lower()]}) "
            f"({test} < {row['alpha']:g})")


def format_preferences(table: list[dict]) -> str:
    """The preference table as text: one block per comparison, with a one-line verdict."""
    lines = []
    for row in table:
        lines.append(f"X = {row['x']}  vs  Y = {row['y']}  ({row['files']} answers file"
                     f"{'s' if row['files'] != 1 else ''}, report {', '.join(row['reports'])})")
        lines.append(f"{'n':>5}{'prefers X':>12}{'prefers Y':>12}{'no difference':>16}{'sign test p':>14}")
        p = "nan" if math.isnan(row["p"]) else f"{row['p']:.4g}"
        lines.append(f"{row['n']:>5}{row['prefers_x']:>12}{row['prefers_y']:>12}{row['no_difference']:>16}{p:>14}")
        lines.append(verdict_line(row))
        lines.append("")
    return "\n".join(lines).rstrip("\n")
