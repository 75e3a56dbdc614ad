"""Read readers' exports of a study against its blinding key and report the statistics (`analyse`).

Every answer is unblinded through the key (label -> method per item). Reported, per question:

- choice questions: how often each method was chosen when shown, with a Wilson 95 % interval (answers treated as
  independent) and a bootstrap 95 % interval that resamples readers and items (cases) with replacement, the
  honest one when readers or cases differ; and, per pair of methods shown together, how often the first was
  chosen over the second;
- Likert questions: the mean score per method with the same two-level bootstrap interval;
- agreement between readers on each choice question (in method space, so label order does not matter): Cohen's
  kappa per pair of readers and Fleiss' kappa over the items every reader answered;
- time per item (median, mean per reader) and the items with the most disagreement.

A foreign or tampered export stops the analysis with one line naming the file: another study id, a case-list
checksum that differs, an unknown item, an item whose case does not match, an answer outside the item's labels
or the Likert scale, an item answered twice, or the same reader twice.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bundle.core.atomic import replace_atomically, write_text_atomic
from bundle.core.errors import StudyError
from bundle.evaluation.reader_study.study import FORMAT, case_list_checksum

__all__ = ["load_key", "load_export", "unblind", "wilson", "cohen_kappa", "fleiss_kappa", "analyse"]

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (n > 0): stays inside [0, 1] and is sensible at k = 0 or n."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cohen's kappa of two raters' labels on the same subjects: (p_o - p_e) / (1 - p_e); nan if p_e = 1."""
    if len(a) != len(b) or not a:
        return math.nan
    n = len(a)
    po = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[c] * cb[c] for c in set(ca) | set(cb)) / (n * n)
    return math.nan if pe >= 1 else (po - pe) / (1 - pe)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from a (subjects, categories) count table with the same number of raters per subject."""
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or counts.shape[0] == 0:
        return math.nan
    n = counts.sum(1)
    if not np.all(n == n[0]) or n[0] < 2:
        return math.nan
    m = n[0]
    p_j = counts.sum(0) / counts.sum()
    p_i = ((counts * counts).sum(1) - m) / (m * (m - 1))
    pbar, pe = p_i.mean(), (p_j * p_j).sum()
    return math.nan if pe >= 1 else float((pbar - pe) / (1 - pe))


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise StudyError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise StudyError(f"{path}: the {what} is not JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: the {what} is not a JSON object")
    return data


def load_key(path: str | Path) -> dict:
    """The blinding key written by `make_study`, checked against its own case-list checksum."""
    path = Path(path)
    key = _read_json(path, "study key")
    if key.get("format") != FORMAT or not isinstance(key.get("items"), list):
        raise StudyError(f"{path}: not a reader-study key (format {key.get('format')!r}, expected {FORMAT!r})")
    if case_list_checksum(key["items"]) != key.get("case_list_sha256"):
        raise StudyError(f"{path}: the key's item list does not match its checksum (edited by hand?)")
    return key


def load_export(path: str | Path, key: Mapping[str, Any]) -> dict:
    """One reader's export, validated against `key`; raises StudyError naming the file and the problem."""
    path = Path(path)
    exp = _read_json(path, "reader export")
    if exp.get("format") != FORMAT:
        raise StudyError(f"{path}: not a reader-study export (format {exp.get('format')!r})")
    if exp.get("study_id") != key["study_id"]:
        raise StudyError(f"{path}: belongs to study {exp.get('study_id')!r}, not {key['study_id']!r}")
    if exp.get("case_list_sha256") != key["case_list_sha256"]:
        raise StudyError(f"{path}: its case-list checksum differs from the study's (another version of the study?)")
    if not str(exp.get("reader", "")).strip():
        raise StudyError(f"{path}: the export names no reader")
    if not isinstance(exp.get("answers"), list):
        raise StudyError(f"{path}: the export has no answers list")
    items = {it["item"]: it for it in key["items"]}
    questions = {q["id"]: q for q in key["questions"]}
    seen = set()
    for ans in exp["answers"]:
        if not isinstance(ans, dict):
            raise StudyError(f"{path}: an answer is not an object")
        item_id = ans.get("item")
        if item_id not in items:
            raise StudyError(f"{path}: answer for unknown item {item_id!r}")
        if item_id in seen:
            raise StudyError(f"{path}: item {item_id!r} is answered twice")
        seen.add(item_id)
        item = items[item_id]
        if ans.get("case") != item["case"]:
            raise StudyError(f"{path}: item {item_id!r} is case {item['case']!r}, the export says {ans.get('case')!r}")
        t = ans.get("time_s")
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise StudyError(f"{path}: item {item_id!r} has an invalid time_s {t!r}")
        given = ans.get("answers")
        if not isinstance(given, dict):
            raise StudyError(f"{path}: item {item_id!r} has no answers object")
        for qid, value in given.items():
            if qid not in questions:
                raise StudyError(f"{path}: item {item_id!r} answers unknown question {qid!r}")
            _check_value(path, item, questions[qid], value)
        for qid, q in questions.items():
            if q.get("required") and qid not in given:
                raise StudyError(f"{path}: item {item_id!r} lacks an answer to the required question {qid!r}")
    return exp


def _check_value(path: Path, item: Mapping[str, Any], q: Mapping[str, Any], value: Any) -> None:
    where = f"{path}: item {item['item']!r} question {q['id']!r}"
    if q["type"] == "choice":
        allowed = list(item["labels"]) + (["none"] if q.get("none") else [])
        if value not in allowed:
            raise StudyError(f"{where}: answer {value!r} is not one of {allowed}")
    elif q["type"] == "likert":
        if not isinstance(value, dict) or set(value) - set(item["labels"]):
            raise StudyError(f"{where}: expected a score per label {item['labels']}, got {value!r}")
        for score in value.values():
            if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= q["scale"]:
                raise StudyError(f"{where}: score {score!r} is outside 1..{q['scale']}")
    elif not isinstance(value, str):
        raise StudyError(f"{where}: expected text, got {value!r}")


def unblind(exports: Sequence[Mapping[str, Any]], key: Mapping[str, Any]) -> list[dict]:
    """Flatten exports into rows in method space: one row per reader, item and question.

    Row: {reader, item, case, question, type, shown (methods), value} where value is a method name or "none"
    (choice), {method: score} (likert) or the text; time rows have question "_time" and value seconds.
    """
    items = {it["item"]: it for it in key["items"]}
    qtypes = {q["id"]: q["type"] for q in key["questions"]}
    rows = []
    for exp in exports:
        for ans in exp["answers"]:
            item = items[ans["item"]]
            to_method = dict(zip(item["labels"], item["methods"], strict=True))
            base = {"reader": exp["reader"], "item": item["item"], "case": item["case"], "shown": item["methods"]}
            rows.append({**base, "question": "_time", "type": "time", "value": float(ans["time_s"])})
            for qid, value in ans["answers"].items():
                if qtypes[qid] == "choice":
                    value = to_method.get(value, "none")
                elif qtypes[qid] == "likert":
                    value = {to_method[lab]: s for lab, s in value.items()}
                rows.append({**base, "question": qid, "type": qtypes[qid], "value": value})
    return rows


def _bootstrap(matrix: np.ndarray, reps: int, rng: np.random.Generator, chunk: int = 250) -> tuple[float, float]:
    """95 % percentile interval of the nan-mean of a (readers, items) matrix, resampling both axes.

    Each replicate draws readers and items with replacement (a two-level bootstrap: readers and cases both
    vary); replicates where nothing was answered are dropped. Vectorised in chunks of (chunk, readers, items).
    """
    r, i = matrix.shape
    values, counts = np.nan_to_num(matrix), np.isfinite(matrix).astype(float)
    parts: list[np.ndarray] = []
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        rr, ii = rng.integers(r, size=(n, r, 1)), rng.integers(i, size=(n, 1, i))
        total, count = values[rr, ii].sum((1, 2)), counts[rr, ii].sum((1, 2))
        parts.append(total[count > 0] / count[count > 0])
    stats = np.concatenate(parts)
    if not stats.size:
        return (math.nan, math.nan)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return (float(lo), float(hi))


def _matrix(rows: list[dict], readers: list[str], items: list[str], value) -> np.ndarray:
    """(readers, items) float matrix of value(row) (nan where the reader did not answer / method not shown)."""
    m = np.full((len(readers), len(items)), np.nan)
    ri, ii = {r: n for n, r in enumerate(readers)}, {t: n for n, t in enumerate(items)}
    for row in rows:
        v = value(row)
        if v is not None:
            m[ri[row["reader"]], ii[row["item"]]] = v
    return m


def statistics(rows: list[dict], key: Mapping[str, Any], reps: int = 2000, seed: int = 0) -> dict:
    """Every figure of the report from unblinded `rows` (see module docstring); plain dicts, JSON-ready."""
    rng = np.random.default_rng(seed)
    readers = sorted({r["reader"] for r in rows})
    items = [it["item"] for it in key["items"]]
    methods = list(key["methods"])
    out: dict[str, Any] = {"readers": readers, "n_items": len(items), "methods": methods, "questions": {}}
    for q in key["questions"]:
        qrows = [r for r in rows if r["question"] == q["id"]]
        res: dict[str, Any] = {"type": q["type"], "text": q["text"], "n_answers": len(qrows)}
        if q["type"] == "choice":
            res["methods"] = {}
            for m in methods:
                shown = [r for r in qrows if m in r["shown"]]
                k = sum(r["value"] == m for r in shown)
                mat = _matrix(shown, readers, items, lambda r, m=m: float(r["value"] == m))
                res["methods"][m] = {
                    "chosen": k,
                    "shown": len(shown),
                    "rate": k / len(shown) if shown else math.nan,
                    "wilson95": wilson(k, len(shown)),
                    "bootstrap95": _bootstrap(mat, reps, rng) if shown else (math.nan, math.nan),
                }
            res["none"] = sum(r["value"] == "none" for r in qrows)
            res["pairs"] = {}
            for m1, m2 in itertools.combinations(methods, 2):
                both = [r for r in qrows if m1 in r["shown"] and m2 in r["shown"] and r["value"] in (m1, m2)]
                if both:
                    k = sum(r["value"] == m1 for r in both)
                    res["pairs"][f"{m1} vs {m2}"] = {
                        "first": k,
                        "n": len(both),
                        "rate": k / len(both),
                        "wilson95": wilson(k, len(both)),
                    }
            res["agreement"] = _agreement(qrows, readers, items, methods)
            res["disagreement"] = _disagreement(qrows)
        elif q["type"] == "likert":
            res["methods"] = {}
            for m in methods:
                scores = [r["value"][m] for r in qrows if m in r["value"]]
                mat = _matrix(qrows, readers, items, lambda r, m=m: r["value"].get(m))
                res["methods"][m] = {
                    "n": len(scores),
                    "mean": float(np.mean(scores)) if scores else math.nan,
                    "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else math.nan,
                    "bootstrap95": _bootstrap(mat, reps, rng) if scores else (math.nan, math.nan),
                }
        else:
            res["texts"] = [{"reader": r["reader"], "case": r["case"], "text": r["value"]} for r in qrows]
        out["questions"][q["id"]] = res
    times = [r for r in rows if r["question"] == "_time"]
    out["time"] = {
        "median_s": float(np.median([r["value"] for r in times])) if times else math.nan,
        "per_reader": {
            rd: {"n": len(v), "mean_s": float(np.mean(v)), "median_s": float(np.median(v))}
            for rd in readers
            if (v := [r["value"] for r in times if r["reader"] == rd])
        },
    }
    out["completion"] = {rd: sum(r["reader"] == rd for r in times) for rd in readers}
    return out


def _agreement(qrows: list[dict], readers: list[str], items: list[str], methods: list[str]) -> dict:
    """Cohen's kappa per reader pair (items both answered) and Fleiss' kappa (items every reader answered)."""
    by = {(r["reader"], r["item"]): r["value"] for r in qrows}
    res: dict[str, Any] = {"cohen": {}, "fleiss": math.nan, "fleiss_items": 0}
    if len(readers) < 2:
        res["note"] = "agreement needs two or more readers"
        return res
    for a, b in itertools.combinations(readers, 2):
        common = [t for t in items if (a, t) in by and (b, t) in by]
        res["cohen"][f"{a} / {b}"] = {
            "kappa": cohen_kappa([by[a, t] for t in common], [by[b, t] for t in common]),
            "n": len(common),
        }
    cats = methods + ["none"]
    full = [t for t in items if all((rd, t) in by for rd in readers)]
    if full:
        table = np.array([[sum(by[rd, t] == c for rd in readers) for c in cats] for t in full])
        res["fleiss"], res["fleiss_items"] = fleiss_kappa(table), len(full)
    return res


def _disagreement(qrows: list[dict]) -> list[dict]:
    """Per item: the votes and the share of readers not with the majority (0 = unanimous), worst first."""
    per: dict[str, list[dict]] = {}
    for r in qrows:
        per.setdefault(r["item"], []).append(r)
    out = []
    for item, rs in per.items():
        votes = Counter(r["value"] for r in rs)
        out.append(
            {
                "item": item,
                "case": rs[0]["case"],
                "votes": dict(votes),
                "disagreement": 1 - max(votes.values()) / len(rs),
                "readers": len(rs),
            }
        )
    return sorted(out, key=lambda d: (-d["disagreement"], d["item"]))


def _fmt_ci(ci: Sequence[float], pct: bool = True) -> str:
    if any(math.isnan(c) for c in ci):
        return "n/a"
    return f"{100 * ci[0]:.0f}-{100 * ci[1]:.0f} %" if pct else f"{ci[0]:.2f}-{ci[1]:.2f}"


def markdown(stats: Mapping[str, Any], key: Mapping[str, Any]) -> str:
    """The report as Markdown: what was asked, the numbers, and what they do not say."""
    lines = [
        f"# {key.get('title') or 'Reader study'}",
        "",
        f"Study {key['study_id']}, {stats['n_items']} item(s), design {key.get('design')!r}, "
        f"{len(stats['readers'])} reader(s): "
        + ", ".join(f"{r} ({stats['completion'][r]}/{stats['n_items']})" for r in stats["readers"]),
        "",
    ]
    for qid, res in stats["questions"].items():
        lines += [f"## {qid}: {res['text']}", ""]
        if res["type"] == "choice":
            lines += [
                "| method | chosen / shown | rate | Wilson 95 % | bootstrap 95 % (readers x cases) |",
                "|---|---|---|---|---|",
            ]
            for m, v in res["methods"].items():
                rate = "n/a" if math.isnan(v["rate"]) else f"{100 * v['rate']:.0f} %"
                lines.append(
                    f"| {m} | {v['chosen']} / {v['shown']} | {rate} | {_fmt_ci(v['wilson95'])} | "
                    f"{_fmt_ci(v['bootstrap95'])} |"
                )
            if res["none"]:
                lines.append(f"\n'None' answered {res['none']} time(s).")
            if res["pairs"]:
                lines += ["", "| pair | first chosen over second / n | rate | Wilson 95 % |", "|---|---|---|---|"]
                lines += [
                    f"| {p} | {v['first']} / {v['n']} | {100 * v['rate']:.0f} % | {_fmt_ci(v['wilson95'])} |"
                    for p, v in res["pairs"].items()
                ]
            ag = res["agreement"]
            lines.append("")
            if "note" in ag:
                lines.append(f"Agreement: {ag['note']}.")
            else:
                fk = "n/a" if math.isnan(ag["fleiss"]) else f"{ag['fleiss']:.2f}"
                lines.append(
                    f"Agreement: Fleiss' kappa {fk} over {ag['fleiss_items']} item(s) all readers answered; "
                    "Cohen's kappa "
                    + ", ".join(
                        f"{p} {'n/a' if math.isnan(v['kappa']) else format(v['kappa'], '.2f')} (n={v['n']})"
                        for p, v in ag["cohen"].items()
                    )
                    + "."
                )
            worst = [d for d in res["disagreement"] if d["disagreement"] > 0][:5]
            if worst:
                lines.append(
                    "Most disagreement: "
                    + "; ".join(
                        f"{d['item']} ({d['case']}): " + ", ".join(f"{k} {n}" for k, n in d["votes"].items())
                        for d in worst
                    )
                    + "."
                )
        elif res["type"] == "likert":
            lines += ["| method | n | mean | sd | bootstrap 95 % |", "|---|---|---|---|---|"]
            for m, v in res["methods"].items():
                mean = "n/a" if math.isnan(v["mean"]) else f"{v['mean']:.2f}"
                sd = "n/a" if math.isnan(v["sd"]) else f"{v['sd']:.2f}"
                lines.append(f"| {m} | {v['n']} | {mean} | {sd} | {_fmt_ci(v['bootstrap95'], pct=False)} |")
        else:
            lines += [f"- {t['reader']}, {t['case']}: {t['text']}" for t in res["texts"]] or ["(none)"]
        lines.append("")
    t = stats["time"]
    lines += [
        "## Time per case",
        "",
        f"Median {t['median_s']:.1f} s over all answers.",
        "",
        "| reader | items | mean s | median s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r} | {v['n']} | {v['mean_s']:.1f} | {v['median_s']:.1f} |" for r, v in t["per_reader"].items()]
    lines += [
        "",
        "## What this does and does not say",
        "",
        "Rates are how often readers chose a method when it was shown; the Wilson interval treats every answer "
        "as independent, the bootstrap resamples readers and cases and is the one to quote when either is "
        "few. Kappa measures agreement beyond chance between these readers only. A preference is not "
        "diagnostic accuracy: nothing here says whether a finding was detected or missed.",
        "",
    ]
    return "\n".join(lines)


def figure(stats: Mapping[str, Any], path: Path) -> None:
    """Bar charts: choice rates with bootstrap intervals per choice question, Likert means per Likert one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(q, r) for q, r in stats["questions"].items() if r["type"] in ("choice", "likert")]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(3.2 * max(len(shown), 1), 3.2), squeeze=False)
    for ax, (qid, res) in zip(axes[0], shown, strict=False):
        names = list(res["methods"])
        if res["type"] == "choice":
            vals = [res["methods"][m]["rate"] for m in names]
            cis = [res["methods"][m]["bootstrap95"] for m in names]
            ax.set_ylim(0, 1)
            ax.set_ylabel("chosen when shown")
        else:
            vals = [res["methods"][m]["mean"] for m in names]
            cis = [res["methods"][m]["bootstrap95"] for m in names]
            ax.set_ylabel("mean score")
        err = np.array(
            [
                [v - c[0] if np.isfinite(c[0]) else 0, c[1] - v if np.isfinite(c[1]) else 0]
                for v, c in zip(vals, cis, strict=True)
            ]
        ).T
        ax.bar(range(len(names)), np.nan_to_num(vals), yerr=np.nan_to_num(err), capsize=3, color="#4a7ab5")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(qid, fontsize=9)
    fig.tight_layout()
    replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110), keep_suffix=True)
    plt.close(fig)


def analyse(exports: Sequence[str | Path], key_path: str | Path, output_dir: str | Path, reps: int = 2000) -> dict:
    """Validate every export against the key, unblind, and write report.md, report.json and report.png."""
    if not exports:
        raise StudyError(f"{key_path}: no reader exports given")
    key = load_key(key_path)
    loaded: list[dict[str, Any]] = []
    readers: dict[str, str | Path] = {}
    for path in exports:
        exp = load_export(path, key)
        if exp["reader"] in readers:
            raise StudyError(f"{path}: reader {exp['reader']!r} already exported in {readers[exp['reader']]}")
        readers[exp["reader"]] = path
        loaded.append(exp)
    stats = statistics(unblind(loaded, key), key, reps=reps)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.md", markdown(stats, key))
    write_text_atomic(out / "report.json", json.dumps(stats, indent=1, default=float))
    figure(stats, out / "report.png")
    return stats
