"""`abovqa docs`: the site builds from the notebooks (a pipeline page from a real batch run, figure included), and a
real browser (Debian's chromium, headless) loads it from a local server, follows the navigation, sees each page's
content, logs no console error, requests nothing that is missing, and renders a non-blank screenshot."""
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import pytest

from conftest import REPO

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install -y chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "A study with one real pipeline step executed by the batch runner (the curate notebook on the embedded sample)."
    from abovqa.runs import demo_plan, run_plan
    work = tmp_path_factory.mktemp("docs-work")
    plan = demo_plan(work)
    plan["runs"] = [run for run in plan["runs"] if run["name"] == "10_curate"]
    table = run_plan(plan, work=str(work), verbose=False)
    assert table.status.tolist() == ["ok"], table.to_string()
    return work


@pytest.fixture(scope="module")
def site(work, tmp_path_factory):
    out = tmp_path_factory.mktemp("docs") / "_site"
    code = "import sys; from abovqa.docs import build_docs; build_docs(sys.argv[1], work=sys.argv[2])"
    # the library notebooks' examples run while building (as long as nbdev_test takes on them): 13 min on a busy 2-core machine
    done = subprocess.run([sys.executable, "-c", code, str(out), str(work)], cwd=REPO, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    return out


@pytest.fixture(scope="module")
def server(site, tmp_path_factory):
    "The site over HTTP on loopback (a free port), its request log kept to spot any missing file."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("server") / "requests.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "http.server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/", log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def chromium(url, profile_dir, *flags, timeout=120) -> subprocess.CompletedProcess:
    "One headless chromium run with its own profile (two cannot share one), console messages on stderr."
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", *flags, url],
                          capture_output=True, text=True, timeout=timeout)


def console_messages(stderr: str) -> list[str]:
    "What pages wrote to the browser console (these pages have no scripts: any message is a problem)."
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


class PageView(HTMLParser):
    "What a reader sees in a rendered DOM: the title, the first heading, the sidebar's links, the main text."
    def __init__(self, dom: str):
        super().__init__()
        self.title, self.h1, self.nav, self.current, self.text = "", "", [], None, []
        self._in, self._nav_depth = [], 0
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._in.append(tag)
        if tag == "nav":
            self._nav_depth += 1
        if tag == "a" and self._nav_depth and attrs.get("href"):
            self.nav.append(attrs["href"])
            if attrs.get("aria-current") == "page":
                self.current = attrs["href"]

    def handle_endtag(self, tag):
        if tag == "nav":
            self._nav_depth -= 1
        while self._in and self._in.pop() != tag:
            pass

    def handle_data(self, data):
        if "title" in self._in:
            self.title += data
        elif "h1" in self._in and not self.h1.endswith("\n"):
            self.h1 += data
        elif "main" in self._in and not self._nav_depth:
            self.text.append(data)

    @property
    def main_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def test_every_notebook_is_a_page(site):
    manifest = json.loads((site / "docs.json").read_text())
    notebooks = sorted(p.relative_to(REPO / "nbs").as_posix() for p in [*(REPO / "nbs").glob("*.ipynb"), *(REPO / "nbs" / "pipeline").glob("*.ipynb")])
    assert sorted(p["notebook"] for p in manifest["pages"]) == notebooks
    pages = {p["href"]: p for p in manifest["pages"]}
    assert all((site / href).is_file() for href in pages)
    assert pages["pipeline/curate.html"]["run"] == "10_curate" and pages["pipeline/curate.html"]["source"].endswith("notebooks/10_curate/10_curate.ipynb")
    assert pages["index.html"]["title"] == "abovqa" and pages["core.html"]["errors"] == []
    core = (site / "core.html").read_text()
    assert '<h3 id="TimeBudget">' in core and '<h3 id="atomic_write">' in core  # nbdev's show_doc entries
    assert "#| export" not in core and ">source</a>" in core and "{target=" not in core
    curate = (site / "pipeline" / "curate.html").read_text()
    assert 'src="data:image/png;base64,' in curate and "batch run <code>10_curate</code>" in curate
    for page in ("metrics.html", "report.html", "curate.html"):  # library notebooks' examples ran while the site was built
        assert re.search(r'<img\b[^>]*\bsrc="data:image/png;base64,', (site / page).read_text()), f"{page} shows its figures"
    assert manifest["executed"]
    # the build ran every library notebook's examples as nbdev_test does, so this is the library notebooks' test: none failed
    failed = {p["notebook"]: p["errors"] for p in manifest["pages"] if "/" not in p["notebook"] and p["errors"]}
    assert not failed, json.dumps(failed, indent=1)
    for page in site.rglob("*.html"):  # nothing fetched from elsewhere: the site works offline and from disk
        assert not re.search(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="(?:https?:)?//', page.read_text()), page
    for name in ("_quarto.yml", "nbdev.yml", "sidebar.yml", "styles.css"):  # the Quarto configuration, for nbdev_docs
        assert (REPO / "nbs" / name).is_file(), name


@needs_browser
def test_browser_follows_the_navigation(site, server, tmp_path):
    base, request_log = server
    manifest = json.loads((site / "docs.json").read_text())
    titles = {urljoin(base, p["href"]): p["title"] for p in manifest["pages"]} | {urljoin(base, e["href"]): e["title"] for e in manifest["extra"]}

    home = chromium(base, tmp_path / "profile-home", "--dump-dom")
    assert home.returncode == 0, home.stderr[-2000:]
    index = PageView(home.stdout)
    assert index.title == "abovqa" and index.h1.strip().startswith("abovqa")
    links = list(dict.fromkeys(urljoin(base, href) for href in index.nav))
    assert set(links) == set(titles) | {base + "index.html"}, "the sidebar lists every page"

    def visit(numbered_url):
        n, url = numbered_url
        return url, chromium(url, tmp_path / f"profile-{n}", "--dump-dom")

    with ThreadPoolExecutor(2) as pool:
        visits = dict(pool.map(visit, enumerate(links)))
    problems = console_messages(home.stderr)
    for url, done in visits.items():
        assert done.returncode == 0, (url, done.stderr[-2000:])
        problems += console_messages(done.stderr)
        page = PageView(done.stdout)
        assert page.title == titles.get(url, "abovqa"), url
        assert page.h1.strip().startswith(page.title), (url, page.h1)
        assert len(page.main_text) > 200, (url, page.main_text[:200])
        assert urljoin(url, page.current) == url, f"{url}: the sidebar marks the page being read"
        assert {urljoin(url, href) for href in page.nav} == set(links), f"{url}: relative links resolve to the same pages"
    assert problems == [], problems
    assert "Executed copy from the batch run" in PageView(visits[base + "pipeline/curate.html"].stdout).main_text
    assert "TimeBudget" in PageView(visits[base + "core.html"].stdout).main_text
    requests = request_log.read_text()
    assert '"GET /pipeline/curate.html HTTP/1.1" 200' in requests
    assert not re.search(r'" (?:4|5)\d\d ', requests), "every request found its file"


def _not_blank(png: Path, size=(1280, 900)):
    from PIL import Image
    with Image.open(png) as image:
        image = image.convert("RGB")
        assert image.size == size
        colours = image.getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50, "a page of text has many shades"
        sidebar = image.crop((0, 0, 240, size[1])).getcolors(maxcolors=1 << 16)
        assert max(sidebar)[1] == (246, 248, 250), "the sidebar's background fills the left column"
        content = image.crop((300, 0, size[0], size[1])).convert("L")
        inked = sum(count for count, level in content.getcolors(maxcolors=256) if level < 200)
        assert inked > 0.01 * (size[0] - 300) * size[1], "the content column carries rendered text"


@needs_browser
def test_screenshot_shows_the_rendered_page(site, server, tmp_path):
    base, _ = server
    for name, url in [("curate", base + "pipeline/curate.html"), ("core-from-disk", (site / "core.html").as_uri())]:
        png = tmp_path / f"{name}.png"
        done = chromium(url, tmp_path / f"profile-{name}", "--window-size=1280,900", "--hide-scrollbars", f"--screenshot={png}")
        assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
        assert console_messages(done.stderr) == []
        _not_blank(png)
        print(png)
