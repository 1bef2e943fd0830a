"""report.html from a tiny synthetic sweep: self-contained, and it loads in headless Chromium with
no console errors and every image decoded."""

import json
import re
import shutil
import subprocess

import pytest

from animefaces.cli import main
from animefaces.train.sweep import run_sweep

from conftest import tiny_config

# Written into the page after load: one JSON line inside <pre id="check">, read from --dump-dom.
_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.alt; });
  var pre = document.createElement('pre');
  pre.id = 'check';
  pre.textContent = JSON.stringify({n: imgs.length, bad: bad});
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed for the report check and was not found; "
                "install it with: apt-get install -y chromium")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import make_dataset

    tmp = tmp_path_factory.mktemp("html")
    data = make_dataset(tmp / "data")
    res = run_sweep(data, config=tiny_config(tmp), weights="random", progress=False)
    return res.run_dir


def test_sweep_writes_a_self_contained_report(run_dir):
    html = (run_dir / "report.html").read_text()
    for section in ("Table 1", "Table 2", "Table 3", "accuracy per group", "Confusion matrices",
                    "ROC and precision-recall", "Reliability diagrams", "risk-coverage",
                    "Out-of-domain guard", "Worst errors"):
        assert section.lower() in html.lower(), section
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    # No network and nothing beside the file: no external scripts, styles or links to fetch.
    assert not re.search(r'(src|href)="(https?:|//)', html)
    assert "<script" not in html


def test_report_command_rewrites_it(run_dir, tmp_path, capsys):
    out = tmp_path / "again.html"
    assert main(["report", str(run_dir), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out and out.stat().st_size > 10_000
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    # The sweep built its report from the document in memory, the command from results.json
    # (written with sorted keys): the same page apart from the figures' bytes.
    def text(p):
        return re.sub(r'base64,[^"]+', "IMG", p.read_text())

    assert text(out) == text(run_dir / "report.html")
    page = text(out)
    assert page.index("<td>train</td>") < page.index("<td>val</td>") < page.index("<td>distinct</td>")


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    browser = _chromium()
    page = tmp_path / "page.html"
    page.write_text((run_dir / "report.html").read_text().replace("</body>", _CHECK + "</body>"))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
           page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<pre id="check">(.*?)</pre>', proc.stdout, re.S)
    assert m, "the page did not finish loading:\n" + proc.stderr[-2000:]
    check = json.loads(m.group(1).replace("&quot;", '"'))
    assert check["n"] >= 5 and check["bad"] == [], check
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, "console messages:\n" + "\n".join(console)
