"""Table 1 / Table 2 and the other sweep outputs, as Markdown, CSV and JSON.

Table 1: train / val / test accuracy per backbone x kernel (test = same anime as training, the
paper's "derivative" set). Table 2: accuracy on the "distinct" split (anime never seen in
training) per backbone x kernel. Each cell uses the C (and gamma) chosen on val for that row.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

from .._io import atomic_write_bytes, atomic_write_json

SPLITS = ("train", "val", "test", "distinct")
CV = "cv"  # the held-out-group scores of the group cross-validation (a pseudo-split)
# Table markers for the degenerate-model flags of results["fits"][i]["flags"] (footnotes explain).
FLAG_MARKERS = {"one_class": "†", "near_majority": "‡"}


# Markdown viewers render inline HTML and links: a file or folder named "<script>..." or
# "[x](javascript:...)" must reach report.md as text. Backslash escapes work for any ASCII
# punctuation in CommonMark; "_" is left alone (intraword, as in mobilenet_v2, it is plain text).
_MD_SPECIAL = re.compile(r"([\\`*\[\]|<>])")


def _md(x) -> str:
    """``x`` as Markdown text: one line, HTML and link syntax escaped, table-cell safe."""
    text = " ".join(str(x).split()).replace("&", "&amp;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def _code(x) -> str:
    """``x`` as a Markdown code span (shown verbatim: nothing in it is markup), fenced with more
    backticks than it holds in a row. For list items, not table cells (a ``|`` would split one)."""
    text = " ".join(str(x).splitlines())
    fence = "`" * (max((len(m) for m in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _num(x, spec: str) -> str:
    """``format(x, spec)`` for a number; anything else as Markdown text (never a crash on a
    string where a number was expected)."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return format(x, spec)
    return _md(x)


def _fmt(x) -> str:
    return "" if x is None else _num(x, ".3f")


def _fmt4(x) -> str:
    return "" if x is None else _num(x, ".4f")


def _params_str(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("kernel", "degree"))


def table_rows(results: dict) -> list[dict]:
    """One dict per (backbone, kernel) with the selected params and each split's accuracy."""
    rows = []
    for f in results["fits"]:
        if not f["selected"]:
            continue
        info = results["backbones"][f["backbone"]]
        rows.append({"backbone": f["backbone"], "kernel": f["kernel"],
                     "params": _params_str(f["params"]),
                     "random_weights": bool(info.get("random_weights")),
                     **{s: f["accuracy"].get(s) for s in SPLITS + (CV,)},
                     "extra": {s: a for s, a in f["accuracy"].items() if s not in SPLITS + (CV,)},
                     "flags": [FLAG_MARKERS.get(x, x) for x in f.get("flags", [])],
                     "calibration": f.get("calibration")})
    return rows


def _csv(rows: list[dict], columns: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: (_fmt(r[c]) if isinstance(r.get(c), float) else r.get(c, "")) for c in columns})
    return buf.getvalue().encode()


def _name(r: dict) -> str:
    return _md(r["backbone"]) + (" (random weights)" if r["random_weights"] else "")


def _mark(r: dict, split: str, best: dict) -> str:
    cell = _fmt(_value(r, split))
    if best and r["backbone"] == best["backbone"] and r["kernel"] == best["kernel"]:
        cell = f"**{cell}**"
    return cell


def _chosen_on(results: dict) -> str:
    return "held-out groups" if results.get("selected_on") == CV else "val"


def table1_markdown(results: dict) -> str:
    rows = table_rows(results)
    best = results.get("best") or {}
    cv = any(r.get(CV) is not None for r in rows)
    lines = [f"| backbone | kernel | params (chosen on {_chosen_on(results)}) | train | val | "
             + ("new groups (CV) | " if cv else "") + "test |",
             "|---|---|---|---|---|" + ("---|" if cv else "") + "---|"]
    for r in rows:
        flag = " " + " ".join(r["flags"]) if r["flags"] else ""
        lines.append(f"| {_name(r)} | {_md(r['kernel'])}{flag} | {_md(r['params'])} | {_mark(r, 'train', best)} "
                     f"| {_mark(r, 'val', best)} | " + (f"{_mark(r, CV, best)} | " if cv else "")
                     + f"{_mark(r, 'test', best)} |")
    return "\n".join(lines)


def _value(r: dict, split: str):
    return r.get(split) if split in SPLITS + (CV,) else r["extra"].get(split)


def table2_markdown(results: dict, split: str = "distinct") -> str:
    """Accuracy on ``split`` (``distinct``, or an evaluation-only split) per kernel x backbone."""
    rows = table_rows(results)
    best = results.get("best") or {}
    backbones = list(dict.fromkeys(_name(r) for r in rows))
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))

    def mark(r):
        cell = _fmt(_value(r, split))
        if best and r["backbone"] == best["backbone"] and r["kernel"] == best["kernel"]:
            cell = f"**{cell}**"
        return cell

    cell = {(_name(r), r["kernel"]): mark(r) + (" " + " ".join(r["flags"]) if r["flags"] else "")
            for r in rows}
    lines = ["| kernel | " + " | ".join(backbones) + " |", "|---" * (len(backbones) + 1) + "|"]
    for k in kernels:
        lines.append(f"| {_md(k)} | " + " | ".join(cell.get((b, k), "") or "n/a" for b in backbones) + " |")
    return "\n".join(lines)


def runtime_line(rt: dict) -> str:
    """``precision fp32, device cpu (AMD EPYC ..., AVX2, no bf16 units), batch 16`` for reports."""
    cpu = rt.get("cpu") or {}
    where = rt.get("device", "?")
    if str(where).startswith("cpu") and cpu:
        kind = "AVX512-BF16" if cpu.get("bf16_units") else ("AVX-512" if cpu.get("avx512f") else
                                                            "AVX2" if cpu.get("avx2") else "no AVX2")
        kernels = f", torch kernels {cpu['torch_kernels']}" if cpu.get("torch_kernels") else ""
        where = f"{where} ({cpu.get('model') or 'unknown CPU'}, {kind}{kernels})"
    return (f"precision {rt.get('precision')}, device {where}, batch {rt.get('batch_size')}, "
            f"pooling {rt.get('pooling')}")


def summary_markdown(results: dict) -> str:
    best = results.get("best") or {}
    data = results["data"]
    out = [f"# animefaces sweep {_md(results['run_id'])}", "",
           f"- data: {_code(data['source'])} ({_md(', '.join(f'{s}: ' + ', '.join(f'{k} {v}' for k, v in c.items()) for s, c in data['counts'].items()))})",
           f"- config: {_code(results['config_source'])}; feature scaling: **{_md(results['scaling'])}**",
           *([f"- features computed with: {_md(runtime_line(results['runtime']))}"]
             if results.get("runtime") else []),
           f"- best on {_chosen_on(results)} (never test): **{_md(best.get('backbone'))} {_md(best.get('kernel'))}** "
           f"({_md(_params_str(best.get('params', {})))}) -> "
           + ", ".join(f"{_md(s)} {_fmt(a)}" for s, a in best.get("accuracy", {}).items()),
           f"- model: {_code(best.get('model'))}",
           f"- time: extract {_num(results['timings']['extract_seconds'], '.1f')} s, "
           f"SVM fits {_num(results['timings']['fit_seconds'], '.1f')} s, total {_num(results['timings'].get('total_seconds', 0), '.1f')} s"]
    for note in data.get("notes", []):
        out.append(f"- note: {_md(note)}")
    gcv = results.get("group_cv")
    if gcv:
        out.append(f"- model selection and calibration: {_md(gcv['note'])}"
                   + ("" if gcv.get("used") else " (fallback)"))
        out.append(f"- groups: {_md(_groups_from(data))}")
    skipped = {n: i for n, i in results["backbones"].items() if i["status"] != "ok"}
    random_rows = [n for n, i in results["backbones"].items() if i.get("random_weights")]
    if random_rows:
        out.append(f"- **random weights** (explicit --weights random, for tests only): {_md(', '.join(random_rows))}")
    out += ["", "## Table 1: accuracy on train / val / test (derivative: same anime as training)", "",
            table1_markdown(results), ""]
    if any(r.get(CV) is not None for r in table_rows(results)):
        out += ["'new groups (CV)': each train / val image scored by a model fitted without its "
                "group (series / source), the accuracy the kernel / C were chosen on.", ""]
    if any("distinct" in f["accuracy"] for f in results["fits"]):
        out += ["## Table 2: accuracy on the distinct set (anime never seen in training)", "",
                table2_markdown(results), ""]
    for split in extra_splits(results):
        out += [f"## Table 2 ({_md(split)}): accuracy on the evaluation-only split {_md(split)} "
                f"(never trained or chosen on)", "", table2_markdown(results, split), ""]
    if skipped:
        out += ["## Skipped backbones", ""]
        # the first sentence says what is missing and where it goes; the rest (where to get
        # the file) is the same advice for each: `animefaces backbones -v` has it in full
        out += [f"- **{_md(n)}**: {_md(i['reason'].split('. ')[0].rstrip('.'))}" for n, i in skipped.items()]
        out += ["", "Where to get each file: `animefaces backbones -v`.", ""]
    if any(r.get("calibration") for r in table_rows(results)):
        on = ("held-out groups; the new-groups column is out of fold"
              if results.get("selected_on") == CV else "val")
        out += ["## Table 3: calibration of P(face) (ECE, 15 bins / Brier; before -> after; "
                f"calibrator fitted on {on})", "", calibration_markdown(results), ""]
    out += trust_markdown(results)
    footnotes = results.get("footnotes") or []
    if footnotes:
        out += ["## Notes", ""] + [f"- {_md(f)}" for f in footnotes] + [""]
    if results.get("bad_files"):
        out += ["## Images left out (--skip-bad)", ""]
        out += [f"- {_code(b['path'])}: {_md(b['reason'])}" for b in results["bad_files"]]
        out.append("")
    return "\n".join(out)


def extra_splits(results: dict) -> list[str]:
    """Evaluation-only splits measured by the sweep (names other than train / val / test /
    distinct), in report order."""
    seen: dict[str, None] = {}
    for f in results["fits"]:
        for s in f["accuracy"]:
            if s not in SPLITS + (CV,):
                seen.setdefault(s)
    return list(seen)


def _split_name(s: str) -> str:
    return "new groups (CV)" if s == CV else _md(s)


def _groups_from(data: dict) -> str:
    if data.get("layout") == "folders":
        return ("folder tree: an image's group is its sub-folder under the class folder, else "
                "the source video of a frame / crop file name (VIDEO-sec-N.jpg)")
    return "the manifest's group column (an image without one is a group of its own)"


def calibration_markdown(results: dict) -> str:
    """Table 3: per table row, ECE and Brier on held-out groups (out of fold), test, distinct
    and evaluation-only splits, before -> after calibration."""
    rows = [r for r in table_rows(results) if r.get("calibration")]
    splits = [s for s in (CV, "test", "distinct", *extra_splits(results))
              if any(s in r["calibration"]["splits"] for r in rows)]
    head = "| backbone | kernel | calibrator | " + " | ".join(
        f"{_split_name(s)} ECE | {_split_name(s)} Brier" for s in splits) + " |"
    lines = [head, "|---" * (3 + 2 * len(splits)) + "|"]
    for r in rows:
        c = r["calibration"]
        cells = []
        for s in splits:
            m = c["splits"].get(s)
            if not m:
                cells += ["", ""]
                continue
            cells += [f"{_fmt(m['raw']['ece'])} -> {_fmt(m['calibrated']['ece'])}",
                      f"{_fmt4(m['raw']['brier'])} -> {_fmt4(m['calibrated']['brier'])}"]
        lines.append(f"| {_name(r)} | {_md(r['kernel'])} | {_md(c['method'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def trust_markdown(results: dict) -> list[str]:
    """Abstention and out-of-domain sections of report.md (empty when the run has none)."""
    trust = results.get("trust") or {}
    out = []
    ab = trust.get("abstain")
    if ab:
        band = ab.get("band")
        out += ["## Abstention (best model)", "",
                f"- band: {'off' if band is None else f'unsure when {_fmt4(band[0])} < P(face) < {_fmt4(band[1])}'}"
                f" ({_md(ab.get('how'))})", "",
                "| split | coverage | risk when answering | risk answering all | AURC |", "|---|---|---|---|---|"]
        for s, v in ab["splits"].items():
            rc = ab.get("risk_coverage", {}).get(s, {})
            out.append(f"| {_split_name(s)} | {_fmt(v['coverage'])} | {_fmt4(v['risk'])} | {_fmt4(v['full_risk'])} "
                       f"| {_fmt4(rc.get('aurc'))} |")
        out.append("")
        rc = ab.get("risk_coverage", {}).get(CV)
        if rc and rc.get("coverage"):
            out += ["Risk-coverage of held-out groups (train + val images scored by models that "
                    "saw none of their group; the most confident answered first):", "",
                    "| coverage | " + " | ".join(_fmt(c) for c in rc["coverage"]) + " |",
                    "|---" * (len(rc["coverage"]) + 1) + "|",
                    "| risk | " + " | ".join(_fmt4(r) for r in rc["risk"]) + " |", ""]
    per = trust.get("cv_by_source")
    if per:
        out += ["## Held-out groups by data set (leave-series-out)", "",
                "| data set | images | accuracy | coverage | risk when answering | ECE | out of domain |",
                "|---|---|---|---|---|---|---|"]
        for src, v in per.items():
            out.append(f"| {_code(src)} | {_md(v['n'])} | {_fmt(v['accuracy'])} | {_fmt(v.get('coverage'))} "
                       f"| {_fmt4(v.get('risk'))} | {_fmt(v.get('ece'))} | {_fmt(v.get('out_of_domain'))} |")
        out.append("")
    ood = trust.get("ood")
    if ood:
        thr = ood.get("thresholds", {})
        out += ["## Out-of-domain guard (best model)", "",
                f"- feature distance thresholds: colour {_fmt(thr.get('colour', float('nan')))}, "
                f"grayscale {_fmt(thr.get('gray', float('nan')))} ({_md(ood['info'].get('reference'))}, "
                f"quantile {_md(ood['quantile'])}, k = {_md(ood['k'])})",
                *([f"- residual outside the {_md(ood.get('subspace'))} main directions of the training "
                   f"features: threshold {_fmt(thr['residual'])} (quantile {_md(ood.get('subspace_quantile'))})"]
                  if "residual" in thr else []),
                *([f"- grayscale photo: grayscale and feature distance above {_fmt(thr['mid'])} "
                   f"(quantile {_md(ood.get('gray_quantile'))})"] if "mid" in thr else []),
                *([f"- weak threshold {_fmt(thr['weak'])} (quantile {_md(ood.get('weak_quantile'))}), used with "
                   f"the soft-grayscale and palette-graphic statistics; their rates on the reference "
                   f"images: " + ", ".join(f"{_md(k)} {_num(v, '.2%')}" for k, v in ood.get("weak_rates", {}).items())
                   + (f"; turned off (over {_num(ood.get('max_weak_rate', 0.02), '.0%')}): "
                      + _md(", ".join(ood["weak_off"])) if ood.get("weak_off") else "")]
                  if "weak" in thr else []),
                *([f"- reference: {_md(ood['reference_sample']['note'])} (seed "
                   f"{_md(ood['reference_sample']['seed'])})"] if ood.get("reference_sample") else []),
                "- flags on the data, all of which are anime images (false flags):", "",
                "| split | flagged | rate | by reason |", "|---|---|---|---|"]
        for s, v in ood["false_flags"].items():
            reasons = _md(", ".join(f"{k} {n}" for k, n in v["by_reason"].items()))
            out.append(f"| {_split_name(s)} | {_md(v['flagged'])} / {_md(v['n'])} | {_fmt(v['rate'])} | {reasons} |")
        if CV in ood["false_flags"]:
            out += ["", "(train and val are scored against a reference that holds them; 'new groups "
                    "(CV)' scores each of them with its own group left out.)"]
        out.append("")
    return out


def write_predictions(path: Path, rows: list[dict], *, root: Path | None = None) -> None:
    """Per-image scores of the best model (paths relative to ``root`` when inside it)."""
    from ..features.fileindex import RealPaths

    cols = ["path", "split", "group", "y", "decision", "p", "pred", "ood", "ood_reason", "ood_distance"]
    # train / val rows' held-out-group values (group cross-validation), when the run has them
    cv_cols = any("cv_p" in r for r in rows)
    if cv_cols:
        cols += ["cv_decision", "cv_p", "cv_ood"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    # abspath, not resolve(): resolving symlinks of every path took ~0.5 s for 3,745 rows.
    prefix = os.path.join(os.path.abspath(root), "") if root is not None else None
    real = RealPaths()
    out = []
    for r in rows:
        p = os.path.abspath(r["path"])
        if prefix is not None and not p.startswith(prefix):
            p = real(p)  # the data folder is reached through a symlink
        if prefix is not None and p.startswith(prefix):
            p = p[len(prefix):]
        row = (p.replace(os.sep, "/"), r["split"], r["group"], r["y"],
               f"{r['decision']:.5g}", f"{r['p']:.5g}", r["pred"], r["ood"], r["ood_reason"],
               f"{r['ood_distance']:.4g}")
        if cv_cols:
            row += ((f"{r['cv_decision']:.5g}", f"{r['cv_p']:.5g}", r["cv_ood"]) if "cv_p" in r
                    else ("", "", ""))
        out.append(row)
    w.writerows(out)
    atomic_write_bytes(Path(path), buf.getvalue().encode())


def write_reports(results: dict, run_dir: Path) -> None:
    """Write results.json, report.md, table1.{md,csv}, table2.{md,csv} (and bad_files.csv)."""
    run_dir = Path(run_dir)
    rows = table_rows(results)
    atomic_write_json(run_dir / "results.json", results)
    atomic_write_bytes(run_dir / "table1.md", (table1_markdown(results) + "\n").encode())
    cv = [CV] if any(r.get(CV) is not None for r in rows) else []
    atomic_write_bytes(run_dir / "table1.csv", _csv(rows, ["backbone", "kernel", "params", "random_weights",
                                                           "train", "val", *cv, "test"]))
    if any(r.get("distinct") is not None for r in rows):
        atomic_write_bytes(run_dir / "table2.md", (table2_markdown(results) + "\n").encode())
        atomic_write_bytes(run_dir / "table2.csv", _csv(rows, ["backbone", "kernel", "params",
                                                               "random_weights", "distinct"]))
    if results.get("bad_files"):
        atomic_write_bytes(run_dir / "bad_files.csv", _csv(results["bad_files"], ["path", "reason"]))
    atomic_write_bytes(run_dir / "report.md", summary_markdown(results).encode())
