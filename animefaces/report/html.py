"""A self-contained ``report.html`` for a finished sweep run folder.

Reads ``results.json`` and ``predictions.csv`` from the run folder and writes one HTML file with
every figure embedded as a base64 PNG (matplotlib, Agg canvas): no network, no scripts, no files
beside it. The contact sheet of worst errors reads the images by path (``data_root`` in
results.json) and embeds small thumbnails; the report is a local artefact, like the data.

A run folder may come from elsewhere, so what it holds is data, never markup or a licence to
read files: every value from results.json or predictions.csv is HTML-escaped (numbers are
formatted only when they are numbers), the files the report reads are resolved and must lie
inside the run folder (predictions) or the data folder (thumbnails), and a malformed file is an
error naming it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from ..data.images import open_image
from ..errors import AnimeFacesError, BadImageError
from .tables import runtime_line

SPLIT_ORDER = ("train", "val", "test", "distinct")
COLOURS = {"train": "#7f7f7f", "val": "#1f77b4", "test": "#2ca02c", "distinct": "#d62728",
           "new groups (CV)": "#9467bd"}
_MORE_COLOURS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _colour(split: str) -> str:
    """The split's colour; evaluation-only splits get the next free ones (stable by name)."""
    if split in COLOURS:
        return COLOURS[split]
    return _MORE_COLOURS[sum(map(ord, split)) % len(_MORE_COLOURS)]


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _by_split(d: dict) -> list:
    """``d``'s items with split keys in train / val / test / distinct order (results.json is
    written with sorted keys, so the file and the in-memory document order them differently)."""
    rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
    return sorted(d.items(), key=lambda kv: (rank.get(kv[0], len(rank)), str(kv[0])))


def _split_label(s) -> str:
    return "new groups (CV)" if s == "cv" else str(s)


def _by_count(d: dict) -> list:
    """``d``'s (name, count) items, largest count first, then by name."""
    return sorted(d.items(), key=lambda kv: (-kv[1], str(kv[0])))


def _fmt(x, digits=3) -> str:
    """A number with ``digits`` decimals; anything else (from a file) escaped as text."""
    if x is None:
        return ""
    if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)):
        return f"{x:.{digits}f}"
    return _esc(x)


def _inside(base: Path, name, *, what: str, source: Path) -> Path:
    """``base / name`` resolved, refused unless it stays inside ``base``."""
    if not isinstance(name, str) or not name:
        raise AnimeFacesError(f"{source}: {what} = {name!r}; expected the name of a file in the run "
                              f"folder (e.g. 'predictions.csv')")
    base = base.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base):
        raise AnimeFacesError(f"{source}: {what} = {name!r} points outside the run folder {base}; a "
                              f"report reads only files inside its run folder: set it to "
                              f"'predictions.csv', or rerun `animefaces sweep`")
    return path


def read_predictions(path: os.PathLike | str) -> dict[str, np.ndarray]:
    """predictions.csv as columns (numbers as float / int arrays)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = {k: [r[k] for r in rows] for k in (rows[0].keys() if rows else [])}
    out = {k: np.array(v, dtype=object) for k, v in cols.items()}
    for k in ("decision", "p", "ood_distance"):
        if k in out:
            out[k] = out[k].astype(np.float64)
    for k in ("y", "ood"):
        if k in out:
            out[k] = out[k].astype(np.int64)
    return out


# -- figures -----------------------------------------------------------------------------------------
def _figure(w=6.4, h=3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    # each figure calls tight_layout(); bbox_inches="tight" would render every figure twice
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _splits(pred) -> list[str]:
    present = set(pred["split"].tolist()) if len(pred.get("split", [])) else set()
    return [s for s in SPLIT_ORDER if s in present] + sorted(
        str(s) for s in present if s not in SPLIT_ORDER)


def fig_confusion(pred, splits) -> str:
    fig = _figure(3.0 * len(splits), 3.0)
    for i, s in enumerate(splits):
        m = pred["split"] == s
        y = pred["y"][m]
        yhat = (pred["p"][m] >= 0.5).astype(int)
        cm = np.array([[np.sum((y == t) & (yhat == p)) for p in (1, 0)] for t in (1, 0)])
        ax = fig.add_subplot(1, len(splits), i + 1)
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, str(v), ha="center", va="center",
                    color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks([0, 1], ["face", "no_face"])
        ax.set_yticks([0, 1], ["face", "no_face"])
        ax.set_xlabel("predicted (P >= 0.5)")
        if i == 0:
            ax.set_ylabel("true")
        ax.set_title(f"{s} (n={m.sum()})")
    fig.tight_layout()
    return _img(fig, "confusion matrices")


def fig_roc_pr(pred, splits) -> str:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    fig = _figure(10, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for s in splits:
        m = pred["split"] == s
        y, p = pred["y"][m], pred["decision"][m]
        if len(set(y.tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax1.plot(fpr, tpr, color=_colour(s), label=f"{s} AUC {roc_auc_score(y, p):.4f}")
        prec, rec, _ = precision_recall_curve(y, p)
        ax2.plot(rec, prec, color=_colour(s), label=f"{s} AP {average_precision_score(y, p):.4f}")
    ax1.plot([0, 1], [0, 1], ":", color="#999")
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (face = positive)")
    ax2.set(xlabel="recall", ylabel="precision", title="precision-recall")
    for ax in (ax1, ax2):
        ax.legend(loc="lower right" if ax is ax1 else "lower left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _img(fig, "ROC and precision-recall curves")


def fig_reliability(pred, splits, n_bins=15) -> str:
    from ..classify.calibration import ece, raw_probability, reliability

    shown = [s for s in splits if s != "train"]
    fig = _figure(3.4 * max(1, len(shown)), 3.6)
    for i, s in enumerate(shown):
        m = pred["split"] == s
        y = pred["y"][m]
        ax = fig.add_subplot(1, len(shown), i + 1)
        ax.plot([0, 1], [0, 1], ":", color="#999")
        for name, p, style in (("raw", raw_probability(pred["decision"][m]), "s--"),
                               ("calibrated", pred["p"][m], "o-")):
            r = reliability(p, y, n_bins=n_bins)
            xs = [a for a, c in zip(r["mean_p"], r["count"]) if c]
            ys = [b for b, c in zip(r["frac_face"], r["count"]) if c]
            ax.plot(xs, ys, style, ms=4, label=f"{name} ECE {ece(p, y, n_bins=n_bins):.3f}")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean P(face) in bin", title=s)
        if i == 0:
            ax.set_ylabel("fraction of faces")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _img(fig, "reliability diagrams")


def fig_risk_coverage(pred, splits, band=None) -> str:
    from ..classify.calibration import apply_band

    fig = _figure(6.4, 4)
    ax = fig.add_subplot(1, 1, 1)
    curves = [(s, pred["p"][pred["split"] == s], pred["y"][pred["split"] == s])
              for s in splits if s != "train"]
    if "cv_p" in pred:
        # train + val scored by models that saw none of their group (the group cross-validation)
        m = pred["cv_p"] != ""
        if m.any():
            curves.insert(0, ("new groups (CV)", pred["cv_p"][m].astype(np.float64), pred["y"][m]))
    for s, p, y in curves:
        conf = np.maximum(p, 1 - p)
        order = np.argsort(-conf, kind="stable")
        err = ((p[order] >= 0.5).astype(int) != y[order])
        risk = np.cumsum(err) / np.arange(1, len(p) + 1)
        cov = np.arange(1, len(p) + 1) / len(p)
        ax.plot(cov, risk, color=_colour(s), label=f"{s} (AURC {risk.mean():.4f})")
        if band is not None:
            lab = apply_band(p, band)
            ans = lab >= 0
            if ans.any():
                ax.plot([ans.mean()], [np.mean(lab[ans] != y[ans])], "o", color=_colour(s))
    ax.set(xlabel="coverage (fraction answered, most confident first)",
           ylabel="risk (error rate among answered)", title="risk-coverage" +
           (" (dots: the abstain band)" if band is not None else ""))
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _img(fig, "risk-coverage curve")


def fig_contact_sheet(pred, root: Path | None, *, kind: str, n: int = 12, cols: int = 6) -> str | None:
    """Worst errors of one kind (``fp``: no face scored as face; ``fn``: the reverse) on val,
    test and distinct, most confident first, as one image grid with scores."""
    from PIL import Image

    m = np.isin(pred["split"], ["val", "test", "distinct"])
    yhat = (pred["p"] >= 0.5).astype(int)
    if kind == "fp":
        m &= (pred["y"] == 0) & (yhat == 1)
        conf = pred["p"]
    else:
        m &= (pred["y"] == 1) & (yhat == 0)
        conf = 1 - pred["p"]
    idx = np.where(m)[0]
    if not len(idx):
        return None
    idx = idx[np.argsort(-conf[idx], kind="stable")][:n]
    # Composed with Pillow, not as matplotlib subplots: a 12-panel figure took ~1.5 s to lay out.
    from PIL import ImageDraw, ImageFont

    rows = int(np.ceil(len(idx) / cols))
    cell_w, thumb, text_h = 150, 128, 42
    sheet = Image.new("RGB", (cols * cell_w, rows * (thumb + text_h + 8)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for k, i in enumerate(idx):
        x0, y0 = (k % cols) * cell_w, (k // cols) * (thumb + text_h + 8)
        rel = str(pred["path"][i])
        path = Path(root, rel) if root is not None else Path(rel)
        try:
            if root is not None and not path.resolve().is_relative_to(root.resolve()):
                raise BadImageError(path, "outside the data folder")
            # open_image: regular files only, the pixel limit, JPEG draft decoding
            t = open_image(path, draft_size=(thumb, thumb))
            t.thumbnail((thumb, thumb))
            sheet.paste(t, (x0 + (cell_w - t.width) // 2, y0 + text_h + (thumb - t.height) // 2))
        except (BadImageError, OSError, ValueError) as exc:
            why = exc.reason if isinstance(exc, BadImageError) else "unreadable"
            text = "image not found" if why == "no such file" else why
            draw.text((x0 + 4, y0 + text_h + thumb // 2), text[:26], fill="black", font=font)
        draw.text((x0 + 4, y0 + 2), f"P(face)={pred['p'][i]:.3f}  {pred['split'][i]}", fill="black", font=font)
        group = str(pred["group"][i])
        draw.text((x0 + 4, y0 + 15), group[:24], fill=(90, 90, 90), font=font)
        if len(group) > 24:
            draw.text((x0 + 4, y0 + 27), group[24:48], fill=(90, 90, 90), font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    what = "false positives (no face scored as face)" if kind == "fp" else "false negatives (face scored as no face)"
    return f'<img alt="{_esc("worst " + what)}" src="data:image/png;base64,{data}">'


# -- tables -------------------------------------------------------------------------------------------
def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _tables_1_2(results) -> str:
    from .tables import table_rows

    rows = table_rows(results)
    best = results.get("best") or {}

    def cell(r, s):
        v = _fmt(r.get(s))
        return f"<b>{v}</b>" if r["backbone"] == best.get("backbone") and r["kernel"] == best.get("kernel") else v

    def name(r):
        return _esc(r["backbone"] + (" (random weights)" if r["random_weights"] else ""))

    t1 = _table(["backbone", "kernel", "params (chosen on val)", "train", "val", "test"],
                [[name(r), _esc(r["kernel"] + (" " + " ".join(r["flags"]) if r["flags"] else "")),
                  _esc(r["params"]), cell(r, "train"), cell(r, "val"), cell(r, "test")] for r in rows])
    out = ["<h2>Table 1: accuracy on train / val / test (same anime as training)</h2>", t1]
    if any(r.get("distinct") is not None for r in rows):
        out += ["<h2>Table 2: accuracy on the distinct set (anime never seen in training)</h2>",
                _table(["backbone", "kernel", "distinct"],
                       [[name(r), _esc(r["kernel"] + (" " + " ".join(r["flags"]) if r["flags"] else "")),
                         cell(r, "distinct")] for r in rows])]
    cal_rows = [r for r in rows if r.get("calibration")]
    if cal_rows:
        splits = [s for s in ("val", "test", "distinct") if any(s in r["calibration"]["splits"] for r in cal_rows)]
        body = []
        for r in cal_rows:
            c = r["calibration"]
            cells = [name(r), _esc(r["kernel"]), _esc(c["method"])]
            for s in splits:
                m = c["splits"].get(s)
                cells += ([f"{_fmt(m['raw']['ece'])} &rarr; {_fmt(m['calibrated']['ece'])}",
                           f"{_fmt(m['raw']['brier'], 4)} &rarr; {_fmt(m['calibrated']['brier'], 4)}"]
                          if m else ["", ""])
            body.append(cells)
        out += [f"<h2>Table 3: calibration of P(face): ECE ({_esc(cal_rows[0]['calibration'].get('ece_bins', 15))} "
                "bins) and Brier, before &rarr; after (calibrator fitted on val; val is in-sample)</h2>",
                _table(["backbone", "kernel", "calibrator"] + [f"{s} {m}" for s in splits for m in ("ECE", "Brier")], body)]
    notes = results.get("footnotes") or []
    if notes:
        out.append("<ul class='notes'>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(out)


def _group_table(pred, splits) -> str:
    groups = sorted(set(pred["group"].tolist()))
    rows = []
    for g in groups:
        cells = [_esc(g or "(none)")]
        for s in splits:
            m = (pred["group"] == g) & (pred["split"] == s)
            if not m.any():
                cells.append("")
                continue
            acc = np.mean((pred["p"][m] >= 0.5).astype(int) == pred["y"][m])
            cls = " class='low'" if acc < 0.9 else ""
            cells.append(f"<span{cls}>{acc:.3f}</span> <small>({m.sum()})</small>")
        rows.append(cells)
    return _table(["group (series)"] + list(splits), rows)


def _trust_sections(results, pred, splits) -> str:
    trust = results.get("trust") or {}
    out = []
    ab = trust.get("abstain")
    band = tuple(ab["band"]) if ab and ab.get("band") else None
    if ab:
        out.append("<h2>Abstention</h2>")
        out.append(f"<p>Band: {'off' if band is None else f'<b>unsure</b> when {_fmt(band[0], 4)} &lt; P(face) &lt; {_fmt(band[1], 4)}'}"
                   f" ({_esc(ab.get('how', ''))}).</p>")
        out.append(_table(["split", "coverage", "risk when answering", "risk answering all"],
                          [[_esc(_split_label(s)), _fmt(v["coverage"]), _fmt(v["risk"], 4), _fmt(v["full_risk"], 4)]
                           for s, v in _by_split(ab["splits"])]))
    out.append(fig_risk_coverage(pred, splits, band))
    ood = trust.get("ood")
    if ood:
        thr = ood.get("thresholds", {})
        out.append("<h2>Out-of-domain guard</h2>")
        out.append(f"<p>Feature-distance thresholds: colour {_fmt(thr.get('colour', float('nan')))}, grayscale "
                   f"{_fmt(thr.get('gray', float('nan')))} ({_esc(ood['info'].get('reference'))}, quantile "
                   f"{_esc(ood['quantile'])}, k = {_esc(ood['k'])}); image statistics: tiny &lt; "
                   f"{_esc(ood['min_side'])} px, flat &lt; {_esc(ood['flat_resid'])}, noise &lt; "
                   f"{_esc(ood['noise_autocorr'])}, text slides {'on' if ood.get('text') else 'off'}. "
                   f"Every image below is an anime image, so each flag is a false flag.</p>")
        out.append(_table(["split", "flagged", "rate", "by reason", "groups with most flags"],
                          [[_esc(_split_label(s)), f"{_esc(v['flagged'])} / {_esc(v['n'])}", _fmt(v["rate"]),
                            _esc(", ".join(f"{k} {n}" for k, n in _by_count(v["by_reason"]))),
                            _esc(", ".join(f"{k} {n}" for k, n in _by_count(v.get("top_groups", {}))))]
                           for s, v in _by_split(ood["false_flags"])]))
    return "\n".join(out)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;display:block;margin:.5em 0}.low{color:#b00;font-weight:bold}
.notes{color:#555;font-size:90%}small{color:#777}code{background:#f5f5f5;padding:0 3px}
"""


def build_html(run_dir: os.PathLike | str, results: dict | None = None) -> str:
    """The report for a run folder, as one HTML string (``results``: the run's results.json
    document when the caller has it in memory; read from the folder otherwise).

    Raises:
        AnimeFacesError: no results.json, or one that is not valid JSON, of another layout, or
            names a predictions file outside the run folder.
    """
    run_dir = Path(run_dir)
    res_path = run_dir / "results.json"
    if results is not None:
        return _build_html(run_dir, results, res_path)
    if not res_path.is_file():
        raise AnimeFacesError(f"{run_dir}: no results.json; pass a run folder written by "
                              f"`animefaces sweep` (e.g. reports/20260101-120000-default)")
    try:
        results = json.loads(res_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnimeFacesError(f"{res_path}: not valid JSON ({exc}); rerun `animefaces sweep` to "
                              f"write it again") from None
    try:
        if not isinstance(results, dict):
            raise TypeError(f"the top level is a {type(results).__name__}, not an object")
        return _build_html(run_dir, results, res_path)
    except AnimeFacesError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # a file of another version, edited or made up: say which, not a traceback from inside
        raise AnimeFacesError(f"{res_path}: not a results.json this version can read "
                              f"({type(exc).__name__}: {exc}); rerun `animefaces sweep` to write "
                              f"it again") from None


def _build_html(run_dir: Path, results: dict, res_path: Path) -> str:
    pinfo = results.get("predictions") or {}
    pred_path = _inside(run_dir, pinfo.get("file", "predictions.csv"), what="predictions.file",
                        source=res_path)
    best = results.get("best") or {}
    parts = [f"<h1>animefaces sweep {_esc(results.get('run_id', run_dir.name))}</h1>",
             "<ul>",
             f"<li>data: <code>{_esc(results['data']['source'])}</code> "
             + _esc(", ".join(f"{s}: " + ", ".join(f"{k} {v}" for k, v in c.items())
                              for s, c in _by_split(results["data"]["counts"]))) + "</li>",
             f"<li>best on val (never test): <b>{_esc(best.get('backbone'))} {_esc(best.get('kernel'))}</b> "
             + _esc(", ".join(f"{s} {_fmt(a)}" for s, a in _by_split(best.get("accuracy", {})))) + "</li>",
             f"<li>model: <code>{_esc(best.get('model'))}</code></li>",
             f"<li>config: <code>{_esc(results.get('config_source'))}</code>; scaling "
             f"{_esc(results.get('scaling'))}</li>",
             *([f"<li>features computed with: {_esc(runtime_line(results['runtime']))}</li>"]
               if results.get("runtime") else []),
             "</ul>",
             _tables_1_2(results)]
    if pred_path.is_file():
        try:
            pred = read_predictions(pred_path)
        except (KeyError, ValueError, csv.Error, UnicodeDecodeError) as exc:
            raise AnimeFacesError(f"{pred_path}: not a predictions.csv this version can read "
                                  f"({type(exc).__name__}: {exc}); rerun `animefaces sweep`") from None
        splits = _splits(pred)
        root = Path(pinfo["data_root"]) if pinfo.get("data_root") else None
        parts += ["<h2>Best model: accuracy per group (series) on each split</h2>",
                  "<p>Accuracy at P(face) &ge; 0.5 (no abstention); image count in brackets; "
                  "below 0.9 in red.</p>", _group_table(pred, splits),
                  "<h2>Confusion matrices</h2>", fig_confusion(pred, [s for s in splits if s != "train"] or splits),
                  "<h2>ROC and precision-recall</h2>", fig_roc_pr(pred, splits),
                  "<h2>Reliability diagrams</h2>",
                  "<p>Raw = logistic of the SVM score; calibrated = the map fitted on val.</p>",
                  fig_reliability(pred, splits), _trust_sections(results, pred, splits),
                  "<h2>Worst errors</h2>"]
        for kind, title in (("fp", "False positives: no face, scored as face"),
                            ("fn", "False negatives: face, scored as no face")):
            sheet = fig_contact_sheet(pred, root, kind=kind)
            parts += [f"<h3>{title}</h3>", sheet or "<p>none</p>"]
    else:
        parts.append(f"<p>No {_esc(pred_path.name)} in the run folder: per-image figures left out.</p>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>animefaces {_esc(results.get('run_id', ''))}</title><style>{CSS}</style></head>"
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_html_report(run_dir: os.PathLike | str, out: os.PathLike | str | None = None, *,
                      results: dict | None = None) -> Path:
    """Write ``report.html`` (or ``out``) for a run folder; returns its path."""
    from .._io import atomic_write_bytes

    run_dir = Path(run_dir)
    target = Path(out) if out else run_dir / "report.html"
    atomic_write_bytes(target, build_html(run_dir, results).encode("utf-8"))
    return target
