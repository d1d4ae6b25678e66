"""Answers of a blind listening test (``gan.eval.listening``): the key file, unblinding, the preference table.

A blind report plays, per example, two versions X and Y (the degraded input and a
checkpoint's output, or the outputs of checkpoints A and B) as "A" and "B" in a random
order, and asks which is closer to the clean reference. The page holds, per example, only
a random token (``secrets.token_hex``); which order each token stands for is in the **key
file** the report writes outside its folder (``<DIR>.blind-key.json`` by default), with
what X and Y are:

    {"format": "unshift-listening-key", "version": 1, "report_id": "3f9c0a51d2e4", "seed": 3,
     "page": "/data/ab/index.html", "x": "enhanced A: runs/a (step 500)", "y": "enhanced B: runs/b (step 700)",
     "examples": {"9b1c04e7a2f03d58": {"example": 1, "name": "f0.wav torchaudio +12", "order": "yx"}, ...}}

``order`` ``"xy"``: A played X. The listener's page saves an answers file (JSON):

    {"format": "unshift-listening-answers", "version": 2, "report_id": "3f9c0a51d2e4", "listener": "...",
     "saved": "...", "answers": [{"example": 1, "name": "...", "token": "9b1c04e7a2f03d58", "answer": "A"}, ...]}

``answer`` is ``"A"``, ``"B"``, ``"none"`` (no difference) or null (not answered). Unblinding
takes the order and the labels X, Y from the key alone: other fields of an answers file are
ignored, an answers file of another report, a token the key does not hold, an example
missing or given twice are one-line errors. A listener may change their own answers; nothing
in the files can move an answer from one version to the other.

    row = preference_table(["alice.json", "bob.json"], "ab.blind-key.json"); print(format_preferences(row))

Answers files of one report are pooled: answers, how many prefer X, prefer Y, hear no
difference, and the two-sided sign test (``scipy.stats.binomtest``, p = 1/2) on the decided answers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from gan.errors import UnshiftError

FORMAT = "unshift-listening-answers"
VERSION = 2  # 1: keys hashed from the report id and the order (could be unblinded from the page)
KEY_FORMAT = "unshift-listening-key"
KEY_VERSION = 1
ORDERS = ("xy", "yx")  # "xy": A plays X and B plays Y
CHOICES = ("A", "B", "none")
ALPHA = 0.05
ANSWERS_HINT = "give the file as the blind page's download link saved it"


class ListeningResultsError(UnshiftError, ValueError):
    """An answers or key file that cannot be read, is not of its format, or does not belong to the key's report."""


def default_key_path(folder: str | Path) -> Path:
    """Where a blind report in ``folder`` keeps its key by default: ``<folder>.blind-key.json`` beside the folder."""
    folder = Path(folder).resolve()
    return folder.parent / f"{folder.name}.blind-key.json"


def _load_json(path: Path, what: str, hint: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ListeningResultsError(f"{what} {path}: cannot be read ({e.strerror}); check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ListeningResultsError(f"{what} {path}: not JSON ({str(e).splitlines()[0]}); {hint}") from None


def _load_versioned(path: Path, what: str, kind: str, fmt: str, version: int, hint: str):
    """``(doc, need)``: the JSON at ``path`` after checking its ``format`` and ``version``; ``need(cond, why)``
    raises the one-line ``ListeningResultsError`` for a later field check."""
    doc = _load_json(path, what, hint)

    def need(cond: bool, why: str) -> None:
        if not cond:
            raise ListeningResultsError(f"{what} {path}: {why}; {hint}")

    need(isinstance(doc, dict) and doc.get("format") == fmt, f"not {kind} (no \"format\": \"{fmt}\")")
    need(doc.get("version") == version, f"version {doc.get('version')!r}, this reader knows {version}")
    return doc, need


def read_key(path: str | Path) -> dict:
    """A blind report's key file, checked field by field. Raises ``ListeningResultsError``."""
    doc, need = _load_versioned(Path(path), "blind key", "a blind key", KEY_FORMAT, KEY_VERSION,
                                "give the .blind-key.json file the blind report wrote beside its folder")
    for field in ("report_id", "x", "y"):
        need(isinstance(doc.get(field), str) and doc[field] != "", f"'{field}' is missing or not a string")
    need(isinstance(doc.get("examples"), dict) and doc["examples"], "'examples' is missing or empty")
    for token, e in doc["examples"].items():
        need(isinstance(e, dict) and isinstance(e.get("example"), int) and e.get("order") in ORDERS,
             f"token {token}: no integer 'example' and 'order' xy or yx")
    return doc


def read_answers(path: str | Path) -> dict:
    """One answers file, checked field by field (not yet against a key). Raises ``ListeningResultsError``."""
    doc, need = _load_versioned(Path(path), "answers", "a listening-test answers file", FORMAT, VERSION,
                                ANSWERS_HINT)
    need(isinstance(doc.get("report_id"), str) and doc["report_id"] != "", "'report_id' is missing or not a string")
    need(isinstance(doc.get("answers"), list), "'answers' is missing or not a list")
    for i, a in enumerate(doc["answers"]):
        need(isinstance(a, dict) and isinstance(a.get("example"), int) and isinstance(a.get("token"), str),
             f"answer {i} has no integer 'example' and string 'token'")
        need(a.get("answer") in (*CHOICES, None), f"example {a['example']}: answer {a.get('answer')!r} is not one "
                                                  "of A, B, none or null")
    return doc


def unblind(doc: dict, key: dict, path: str | Path = "answers") -> list[str]:
    """Each answered example's preference, ``"x"``, ``"y"`` or ``"none"`` (unanswered ones left out), by the key.

    Raises ``ListeningResultsError`` for answers of another report, a token not in the key, a
    token given for another example or twice, or an example of the report with no entry.
    """
    rid = key["report_id"]
    if doc["report_id"] != rid:
        raise ListeningResultsError(f"answers {path}: of report {doc['report_id']}, the blind key is of report {rid}; "
                                    "give the key the answered report wrote")
    out, seen = [], set()
    for a in doc["answers"]:
        entry = key["examples"].get(a["token"])
        if entry is None:
            raise ListeningResultsError(f"answers {path}: example {a['example']}: token {a['token']!r} is not in the "
                                        f"blind key of report {rid}; {ANSWERS_HINT}")
        if entry["example"] != a["example"]:
            raise ListeningResultsError(f"answers {path}: example {a['example']}: its token is example "
                                        f"{entry['example']}'s; {ANSWERS_HINT}")
        if a["token"] in seen:
            raise ListeningResultsError(f"answers {path}: example {a['example']} is answered twice; {ANSWERS_HINT}")
        seen.add(a["token"])
        if a["answer"] in ("A", "B"):  # "A" is X when the order is "xy"
            out.append("x" if (a["answer"] == "A") == (entry["order"] == "xy") else "y")
        elif a["answer"] == "none":
            out.append("none")
    missing = sorted(e["example"] for t, e in key["examples"].items() if t not in seen)
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise ListeningResultsError(f"answers {path}: {len(missing)} example(s) of report {rid} missing ({shown}); "
                                    f"{ANSWERS_HINT}")
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


def preference_table(paths: list[str | Path], key_path: str | Path, alpha: float = ALPHA) -> dict:
    """Read the key and the answers files of its report, unblind and pool them: one row for the comparison (X, Y)."""
    key = read_key(key_path)
    choices = []
    for path in paths:
        choices += unblind(read_answers(path), key, path)
    return {"x": key["x"], "y": key["y"], "report_id": key["report_id"], "files": len(paths),
            **preferences(choices, alpha)}


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


def format_preferences(row: dict) -> str:
    """The preference table as text, with a one-line verdict."""
    p = "nan" if math.isnan(row["p"]) else f"{row['p']:.4g}"
    return "\n".join([
        f"X = {row['x']}  vs  Y = {row['y']}  ({row['files']} answers file{'s' if row['files'] != 1 else ''}, "
        f"report {row['report_id']})",
        f"{'n':>5}{'prefers X':>12}{'prefers Y':>12}{'no difference':>16}{'sign test p':>14}",
        f"{row['n']:>5}{row['prefers_x']:>12}{row['prefers_y']:>12}{row['no_difference']:>16}{p:>14}",
        verdict_line(row)])
