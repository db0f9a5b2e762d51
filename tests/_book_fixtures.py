"""Helpers for the book tests: the runner module, a local HTTP server, headless Debian Chromium, page checks."""
from __future__ import annotations

import contextlib
import functools
import http.server
import importlib
import json
import re
import shutil
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PROSE_IN_MATH = re.compile(r'["\u201c\u201d]|\b(that|the|and|photo)\b')  # words and quotes that no formula has
RAW_TEX = ("$$", "\\begin{", "\\frac", "\\(", "\\[")  # left in a page's text only when math did not render


def runner():
    """``scripts/run_notebooks.py`` as a module."""
    sys.path.insert(0, str(REPO / "scripts"))
    return importlib.import_module("run_notebooks")


def book_builder():
    sys.path.insert(0, str(REPO / "scripts"))
    return importlib.import_module("build_book")


def chromium_missing() -> str | None:
    """Why Chromium cannot run here, or None."""
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).exists() and not shutil.which(Path(exe).name):
            return f"{exe} not found (Debian packages chromium and chromium-driver; scripts/setup.sh installs them)"
    return None


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) for the duration; yields the base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium(profile_dir: Path) -> Iterator["object"]:
    """Headless Debian Chromium through chromedriver, with a fresh profile and network logging on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile_dir}", "--window-size=1280,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def html_pages(html_root: Path) -> list[Path]:
    """Every page of a built book (not the theme's static files, sources or error reports)."""
    skip = {"_static", "_sources", "_images", "reports"}
    return sorted(p for p in html_root.rglob("*.html") if not skip & set(p.relative_to(html_root).parts))


_WAIT_MATH = """
const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function poll() {
  if (!document.querySelector('.math')) return done('no math');
  if (window.MathJax && MathJax.startup && MathJax.startup.promise)
    return MathJax.startup.promise.then(() => done('typeset'), e => done('error: ' + e));
  if (Date.now() - t0 > 20000) return done('MathJax did not load');
  setTimeout(poll, 100);
})();
"""

_LOAD_IMAGES = """
const done = arguments[arguments.length - 1];
const imgs = [...document.images];
imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
const t0 = Date.now();
(function poll() {
  if (imgs.every(i => i.complete) || Date.now() - t0 > 15000)
    return done(imgs.map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0,
                                inMain: !!i.closest('main, article, [role=main]')})));
  setTimeout(poll, 100);
})();
"""

_TEXT_WITHOUT_CODE = """
const body = document.body.cloneNode(true);
body.querySelectorAll('pre, code, script, style, mjx-assistive-mml, .highlight').forEach(e => e.remove());
return body.textContent;
"""


def check_page(driver, base: str, html_root: Path, page: Path) -> tuple[list[str], list[str], dict]:
    """Open one page; return (problems, internal link targets, facts) for it."""
    rel = page.relative_to(html_root).as_posix()
    driver.get(base + rel)
    problems = []
    title = driver.title
    main_text = driver.execute_script(
        "const m = document.querySelector('main, article, [role=main]'); return m ? m.innerText : '';")
    if not title or "404" in title or len(main_text.strip()) < 40:
        problems.append(f"{rel}: did not render (title {title!r}, {len(main_text.strip())} characters of text)")
    math = driver.execute_async_script(_WAIT_MATH)
    if math not in ("no math", "typeset"):
        problems.append(f"{rel}: math did not render ({math})")
    n_math = driver.execute_script("return document.querySelectorAll('.math').length")
    n_jax = driver.execute_script("return document.querySelectorAll('mjx-container').length")
    if math == "typeset" and n_jax < n_math:
        problems.append(f"{rel}: {n_math} math elements but only {n_jax} typeset")
    # a "$" of prose (SEARLE's placeholder) paired with another one is typeset as math: prose in a math element
    sources = driver.execute_script(
        "return window.MathJax && MathJax.startup && MathJax.startup.document"
        " ? MathJax.startup.document.getMathItemsWithin(document.body).map(m => m.math) : []")
    problems += [f"{rel}: prose typeset as math (a '$' outside backticks?): {s[:80]!r}" for s in sources
                 if PROSE_IN_MATH.search(s)]
    text = driver.execute_script(_TEXT_WITHOUT_CODE)
    for needle in RAW_TEX:
        if needle in text:
            at = text.index(needle)
            problems.append(f"{rel}: raw TeX {needle!r} in the text: ...{text[max(0, at - 60):at + 60]!r}...")
    images = driver.execute_async_script(_LOAD_IMAGES)
    problems += [f"{rel}: broken image {i['src']}" for i in images if not i["ok"]]
    links = driver.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)")
    internal = sorted({link for link in links if link.startswith(base)})
    facts = {"images_in_main": sum(i["inMain"] and i["ok"] for i in images), "math": n_math}
    return problems, internal, facts


def link_problem(link: str, base: str, html_root: Path) -> str | None:
    """Why an internal link is broken (missing file or missing anchor), or None."""
    parsed = urllib.parse.urlsplit(link[len(base) - 1:])
    path = urllib.parse.unquote(parsed.path).lstrip("/")
    target = html_root / path
    if path == "" or path.endswith("/"):
        target = target / "index.html"
    if not target.is_file():
        return f"link to missing file {path or '/'}"
    frag = urllib.parse.unquote(parsed.fragment)
    if frag and target.suffix == ".html":
        html = target.read_text(errors="replace")
        if f'id="{frag}"' not in html and f"id='{frag}'" not in html and f'name="{frag}"' not in html:
            return f"link to missing anchor #{frag} in {path}"
    return None


def notebook_images(ipynb: Path) -> int:
    """Number of image outputs in an executed notebook."""
    nb = json.loads(ipynb.read_text())
    return sum(1 for c in nb["cells"] for o in c.get("outputs", [])
               if any(k.startswith("image/") for k in o.get("data", {})))


def network_requests(driver) -> list[str]:
    """URLs the browser requested since the last call (Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls
