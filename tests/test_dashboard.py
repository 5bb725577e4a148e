"""Dashboards, checked in headless Chromium for what a person sees.

Two sites are built:

* a synthetic one (no LM): hand-made token strings with HTML-special characters, newlines and
  leading spaces, codes that fire on known tokens, and logit weights built to fall in known
  logit-lens classes; it checks escaping, document boundaries, search, class filter and sorting;
* a real one: a constructed 64-latent JumpReLU SAE in the Gemma Scope layout at the embedded
  SmolLM2's layer 15 residual stream (d_model 576), scanned over one batch (~4k tokens) of the
  held-out corpus. An independent oracle (our LM's captured activations encoded with plain numpy)
  gives every latent's firing frequency, the top contexts' values and positions and the
  histogram totals that the pages must show.

Tolerances: values on the pages are printed with 3-4 significant digits (frequencies with 6), so
they are compared at that precision (rtol 1e-3 for 4 digits, 5e-3 for the 3-digit context values; 1e-5 for
frequencies); the oracle and the scan use the same fp32 activations, so larger differences would
be bugs. The browser is required: the tests fail (not skip) without /usr/bin/chromium and
/usr/bin/chromedriver (``apt-get install -y chromium chromium-driver``; ``.ci/run`` does it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from gemmascope.analysis import dashboard as dash
from gemmascope.analysis import logit_lens as ll

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,900",
)


# ----------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        pytest.fail(
            f"the dashboard tests need headless Chromium, but {', '.join(missing)} is missing: "
            "install it with `apt-get install -y chromium chromium-driver` (.ci/run does this)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the dashboard tests need selenium: pip install -e '.[test]'")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in CHROME_ARGS:
        opts.add_argument(a)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(driver, path):
    driver.get("file://" + os.path.abspath(path))
    return driver


def _css(driver, sel):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, sel)


def _visible_rows(driver):
    return [
        int(r.find_elements("css selector", "td")[0].text)
        for r in _css(driver, "#latents tbody tr")
        if r.is_displayed()
    ]


def _bar_total(driver) -> int:
    """Sum of the histogram bars' counts, read from their hover titles ("lo to hi: count")."""
    titles = [b.get_attribute("textContent") for b in _css(driver, "svg.hist rect.bar title")]
    return sum(int(t.rsplit(":", 1)[1]) for t in titles)


def _typed_search_matches(summary, q):
    """Rows the search box should leave: the index, class, top-5 logit-lens tokens, the 3 tokens it
    fires on most and the enriched set names, lower-cased, contain the query."""
    out = []
    for s in summary["latents"]:
        hay = " ".join(
            [str(s["latent"]), s["class"]]
            + s["top_tokens"][:5]
            + [t for t, _ in s["fires_on"][:3]]
            + [e[0] for e in s["enrichment"]]
        ).lower()
        if q.lower() in hay:
            out.append(s["latent"])
    return out


# ----------------------------------------------------------------------------------- synthetic site

SPECIAL = ["<|endoftext|>", "<b>bold</b>", " &amp;", "\n", " leading", "a\tb", "x<y", "'q\""]
VOCAB = SPECIAL + [f"w{i}" for i in range(40 - len(SPECIAL))]
BOLD, AMP, NL, LEAD = 1, 2, 3, 4


def _synthetic_logits(V: int) -> np.ndarray:
    """Rows: prediction, suppression, partition, other (symmetric heavy tails), prediction, partition."""
    pred = np.zeros(V)
    pred[[BOLD, 20]] = 10.0  # 2 of 40 tokens strongly promoted: skew ~4, kurt ~18
    split = np.where(np.arange(V) % 2 == 0, 1.0, -1.0)  # 50/50 two-point: kurtosis 1
    sym = np.zeros(V)
    sym[[10, 11]], sym[[12, 13]] = 5.0, -5.0  # skew 0, kurtosis 10: neither class
    pred2 = np.zeros(V)
    pred2[[LEAD, 30]] = 8.0
    return np.stack([pred, -pred, split, sym, pred2, -split])


@pytest.fixture(scope="module")
def synthetic_site(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic_site"))
    S, T, d_sae = 6, 12, 6
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, len(VOCAB), (S, T)).astype(np.int32)
    tokens[:, 0] = 0  # BOS
    tokens[0, 5] = 0  # a document boundary (EOS) inside row 0
    tokens[0, 6], tokens[0, 3] = BOLD, BOLD
    tokens[1, 4], tokens[1, 5], tokens[1, 6] = AMP, NL, BOLD
    tokens[2, 2], tokens[2, 8] = LEAD, BOLD
    mask = tokens != 0
    codes = np.zeros((S, T, d_sae), np.float32)
    codes[..., 0] = np.where(tokens == BOLD, 5.0, 0.0) + np.where(tokens == AMP, 1.0, 0.0)
    codes[..., 1] = np.where(tokens == LEAD, 2.5, 0.0)
    codes[..., 3] = np.where(tokens % 3 == 0, 0.5 + tokens / 10.0, 0.0)
    codes[..., 4] = np.where(tokens == NL, 3.0, 0.0)
    codes[..., 5] = np.where(tokens > 20, 1.0, 0.0)
    # latent 2 never fires
    res = dash.scan_codes(tokens, mask, codes, k=4)
    q, r = np.linalg.qr(np.random.default_rng(2).standard_normal((d_sae, d_sae)))
    L = _synthetic_logits(len(VOCAB))
    lens = ll.logit_lens(q.astype(np.float32), (q.T @ L).astype(np.float32), k=5)
    summary = dash.write_site(
        out,
        res,
        lens,
        tokens=VOCAB,
        latents=list(range(d_sae)),
        info=dash.SiteInfo(title="synthetic <SAE> & co", text="hand-made rows"),
        log=None,
    )
    return out, res, lens, summary, tokens, codes


def test_synthetic_classes_are_the_designed_ones(synthetic_site):
    _, _, lens, summary, _, _ = synthetic_site
    assert list(lens.feature_class) == ["prediction", "suppression", "partition", "other", "prediction", "partition"]
    assert summary["class_counts"] == {"partition": 2, "prediction": 2, "suppression": 1, "other": 1}


def test_index_lists_searches_filters_and_sorts(browser, synthetic_site):
    out, res, _, summary, _, _ = synthetic_site
    d = _open(browser, os.path.join(out, "index.html"))
    assert d.title == "synthetic <SAE> & co - latents"  # escaped in <title>, read back as text
    assert _visible_rows(d) == [0, 1, 2, 3, 4, 5]
    assert _css(d, "#count")[0].text == "6 of 6 latents"
    # class filter
    from selenium.webdriver.support.ui import Select

    Select(_css(d, "#cls")[0]).select_by_value("prediction")
    assert _visible_rows(d) == [0, 4]
    assert _css(d, "#count")[0].text == "2 of 6 latents"
    Select(_css(d, "#cls")[0]).select_by_value("")
    # typing in the search box filters rows; the query holds HTML-special characters
    box = _css(d, "#search")[0]
    box.send_keys("<b>")
    want = _typed_search_matches(summary, "<b>")
    assert 0 in want and len(want) < 6  # latent 0 fires on "<b>bold</b>"
    assert _visible_rows(d) == want
    assert _css(d, "#count")[0].text == f"{len(want)} of 6 latents"
    box.clear()
    box.send_keys("partition")
    assert _visible_rows(d) == [2, 5]
    box.clear()
    box.send_keys("x")  # clear() sends no input event
    box.send_keys("\b")
    assert len(_visible_rows(d)) == 6
    # sorting: click "frequency" once -> descending frequency
    [th] = [h for h in _css(d, "#latents th") if h.text.startswith("frequency")]
    th.click()
    order = _visible_rows(d)
    freq = res.frequency
    assert [freq[i] for i in order] == sorted(freq, reverse=True)
    th.click()
    assert [freq[i] for i in _visible_rows(d)] == sorted(freq)
    # tokens shown as chips: markup as text, leading spaces visible
    rows = {int(r.find_elements("css selector", "td")[0].text): r for r in _css(d, "#latents tbody tr")}
    assert (
        rows[0].find_elements("css selector", "td")[-1].find_elements("css selector", ".tok")[0].text == "<b>bold</b>"
    )
    assert not _css(d, "#latents b")
    assert (
        rows[4].find_elements("css selector", "td")[-2].find_elements("css selector", ".tok")[0].text == "\u2423leading"
    )


def test_latent_page_escapes_and_stays_within_documents(browser, synthetic_site):
    out, res, _, _, tokens, codes = synthetic_site
    d = _open(browser, os.path.join(out, "latents", "0.html"))
    ctx = _css(d, "#contexts .ctx")
    # latent 0 fires (5.0) on "<b>bold</b>" in rows 0, 1, 2 and (1.0) on " &amp;" in row 1: one context per row
    assert len(ctx) == 3
    assert [float(c.find_element("css selector", ".v").text) for c in ctx] == [5.0, 5.0, 5.0]
    text = "\n".join(c.text for c in ctx)
    assert "<b>bold</b>" in text and not _css(d, "#contexts b")  # shown as text, never as markup
    assert "<|endoftext|>" not in text  # BOS / EOS never shown
    assert "\u21b5" in text and " &amp;" in text  # newline visible; & kept literally
    focus = _css(d, "#contexts span.t.focus")
    assert len(focus) == 3 and all(f.text == "<b>bold</b>" for f in focus)
    assert all(f.get_attribute("title") == "'<b>bold</b>' \u2192 5" for f in focus)
    # row 0: BOLD at 3 and 6 with an EOS at 5 -> the top context (first max, position 3) stops before the EOS
    first = ctx[0].find_elements("css selector", "span.t")
    assert [s.text for s in first] == [VOCAB[t] for t in tokens[0, 1:5]]
    shaded = [s for s in _css(d, "#contexts span.t") if "background" in (s.get_attribute("style") or "")]
    assert {float(s.get_attribute("data-act")) for s in shaded} == {5.0, 1.0}
    assert _bar_total(d) == int(res.fire_counts[0]) == int((codes[..., 0][tokens != 0] > 0).sum())
    # the logit-lens chips show the leading space of " leading" visibly on latent 4's page
    d = _open(browser, os.path.join(out, "latents", "4.html"))
    chips = [c.text for c in _css(d, ".tok.pos")]
    assert chips[0] == "\u2423leading"
    assert "\u21b5" in " ".join(c.text for c in _css(d, "#contexts .ctx"))


def test_dead_latent_page_says_so(browser, synthetic_site):
    out, _, _, _, _, _ = synthetic_site
    d = _open(browser, os.path.join(out, "latents", "2.html"))
    body = d.find_element("css selector", "main").text
    assert "never fired" in body and "no activating context" in body
    assert not _css(d, "svg.hist") and not _css(d, "#contexts .ctx")


# ----------------------------------------------------------------------------------- real LM site

D_SAE = 64
DEAD = 7


def _constructed_sae(d_in: int = 576) -> dict[str, np.ndarray]:
    """Random unit directions as encoder/decoder, thresholds spread so frequencies span decades;
    latent DEAD has a huge negative bias and never fires."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((D_SAE, d_in)).astype(np.float32)
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    b_enc = np.zeros(D_SAE, np.float32)
    b_enc[DEAD] = -1e4
    return {
        "W_enc": W.T.copy(),
        "W_dec": W,
        "b_enc": b_enc,
        "b_dec": np.zeros(d_in, np.float32),
        "threshold": np.linspace(2.0, 30.0, D_SAE).astype(np.float32),
    }


@pytest.fixture(scope="module")
def real_site(tmp_path_factory):
    from gemmascope.data import text as text_lib
    from gemmascope.lm import loading
    from gemmascope.lm.model import capture_activations
    from gemmascope.sae.files import io as sae_io

    root = tmp_path_factory.mktemp("real_site")
    sae = _constructed_sae()
    sae_dir = str(root / "sae")
    sae_io.save_params(
        os.path.join(sae_dir, "params.npz"),
        sae,
        {"site": "res", "layer": 15, "model": "SmolLM2-135M (test)", "d_sae": D_SAE},
    )
    cfg, params, tok = loading.load_embedded()
    out = str(root / "site")
    summary = dash.build_dashboard(sae_dir, out, n_tokens=3000, lm=(cfg, params, tok), log=None)
    # Oracle: the first 32 packed held-out rows, our LM's layer-15 residual, numpy JumpReLU.
    tokens, mask = text_lib.pack(
        tok,
        text_lib.iter_texts({"kind": "embedded", "split_part": "heldout"}),
        128,
        bos_id=cfg.bos_id,
        eos_id=cfg.eos_id,
        pad_id=cfg.pad_id,
        max_sequences=32,
    )
    x = np.asarray(capture_activations(params, tokens, cfg, [(15, "res")])[(15, "res")], np.float32)
    norms = np.linalg.norm(x, axis=-1)
    valid = mask & (norms <= 10.0 * np.median(norms[mask]))
    pre = x @ sae["W_enc"] + sae["b_enc"]
    f = np.where((pre > sae["threshold"]) & valid[..., None], pre, 0.0)
    return out, summary, tokens, valid, f, tok


def test_real_index_shows_every_latent_with_oracle_frequencies(browser, real_site):
    out, summary, _, valid, f, _ = real_site
    assert summary["n_tokens"] == int(valid.sum()) and summary["n_latents"] == D_SAE
    d = _open(browser, os.path.join(out, "index.html"))
    assert _visible_rows(d) == list(range(D_SAE))
    assert _css(d, "#count")[0].text == f"{D_SAE} of {D_SAE} latents"
    freq_cells = [
        float(r.find_elements("css selector", "td")[1].get_attribute("data-v")) for r in _css(d, "#latents tbody tr")
    ]
    want = (f > 0).sum(axis=(0, 1)) / valid.sum()
    np.testing.assert_allclose(freq_cells, want, rtol=1e-5)
    assert freq_cells[DEAD] == 0
    assert re.search(
        rf"{summary['n_tokens']:,} tokens of the embedded corpus", d.find_element("css selector", "header").text
    )
    # the search box narrows the real list too
    box = _css(d, "#search")[0]
    box.send_keys(" the")
    want_rows = _typed_search_matches(summary, " the")
    assert _visible_rows(d) == want_rows and len(want_rows) < D_SAE


def test_real_latent_page_matches_the_oracle(browser, real_site):
    out, summary, tokens, valid, f, tok = real_site
    counts = (f > 0).sum(axis=(0, 1))
    seq_fired = (f > 0).any(axis=1).sum(axis=0)  # sequences where each latent fired
    lat = int(np.flatnonzero((counts >= 30) & (seq_fired > 12))[-1])  # a selective latent with > k contexts
    d = _open(browser, os.path.join(out, "latents", f"{lat}.html"))
    ctx = _css(d, "#contexts .ctx")
    per_seq = np.sort(f[..., lat].max(axis=1))[::-1][:12]
    assert len(ctx) == 12
    np.testing.assert_allclose([float(c.find_element("css selector", ".v").text) for c in ctx], per_seq, rtol=5e-3)
    focus = _css(d, "#contexts span.t.focus")
    assert len(focus) == 12
    np.testing.assert_allclose([float(s.get_attribute("data-act")) for s in focus], per_seq, rtol=1e-3)
    # the outlined token of the top context is the token at the oracle's argmax
    s0 = int(np.argmax(f[..., lat].max(axis=1)))
    p0 = int(np.argmax(f[s0, :, lat]))
    assert focus[0].get_attribute("title").startswith(repr(tok.decode([int(tokens[s0, p0])])))
    shaded = [s for s in _css(d, "#contexts span.t") if "background" in (s.get_attribute("style") or "")]
    assert len(shaded) >= 12
    text = "\n".join(c.text for c in ctx)
    assert "<|endoftext|>" not in text  # BOS never shown
    assert _bar_total(d) == int(counts[lat])
    stats = d.find_element("css selector", ".stats").text
    assert f"({int(counts[lat]):,} of {int(valid.sum()):,})" in stats
    assert summary["latents"][lat]["class"] in stats
    assert len(_css(d, ".tok.pos")) == 10 and len(_css(d, ".tok.neg")) == 10  # logit-lens top / bottom tokens
    d = _open(browser, os.path.join(out, "latents", f"{DEAD}.html"))
    assert "never fired" in d.find_element("css selector", "main").text
    # token-set enrichment is listed only beyond the random-direction floor, and significant
    floor = summary["enrichment_floor"]
    assert floor and all(v > 0 for v in floor.values()) and "leading_space" in floor
    for s in summary["latents"]:
        assert all(abs(score) > floor[name] and q < 0.05 for name, score, q in s["enrichment"])


# ----------------------------------------------------------------------------------- errors


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(dash.DashboardInputError, match="no such SAE file"):
        dash.build_dashboard(str(tmp_path / "nope"), str(tmp_path / "out"), log=None)
    with pytest.raises(dash.DashboardInputError, match="latent 64 out of range: the SAE has 64 latents"):
        dash.parse_latents("0-10,64", 64)
    with pytest.raises(dash.DashboardInputError, match="cannot read 'a-b'"):
        dash.parse_latents("a-b", 64)
    assert dash.parse_latents("3,1-2,3", 64) == [3, 1, 2]
    from gemmascope.sae.files import io as sae_io

    sae_io.save_params(str(tmp_path / "bare" / "params.npz"), _constructed_sae())  # no metadata.json
    with pytest.raises(dash.DashboardInputError, match="no metadata.json with 'layer' and 'site'"):
        dash.build_dashboard(str(tmp_path / "bare"), str(tmp_path / "out"), log=None)
    # the CLI reports the bad latent before loading any model
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "launch", "analyze.py"),
            f"--sae={tmp_path / 'bare'}",
            f"--out={tmp_path / 'out'}",
            "--latents=5,99",
            "--layer=15",
            "--site=res",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "latent 99 out of range: the SAE has 64 latents" in r.stderr + r.stdout


def test_token_display_helpers():
    assert dash.chip_text(" the") == "\u2423the"
    assert dash.chip_text("") == "\u2205"
    assert dash.context_text("a\nb\tc\x0c") == "a\u21b5b\u21e5c\\x0c"
    assert dash.esc('<a href="x">&</a>') == "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"


# ----------------------------------------------------------------------------------- templates


HOSTILE = [
    "<|bos|>",
    "<script>alert(1)</script>",
    "{{ 7*7 }}",
    '" onmouseover="x',
    "</div><b>",
    "a&amp;b",
    "{% raw %}",
    "'",
    "",
]


class _PageParser(HTMLParser):
    """Tags, attribute values and text of a page, entities decoded (what a browser's DOM holds)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.classes, self.attrs, self.text, self.scripts = [], [], [], [], []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.classes.append(dict(attrs).get("class"))
        self.attrs.extend(v for _, v in attrs if v is not None)
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        (self.scripts if self._in_script else self.text).append(data)


def _parse(path):
    p = _PageParser()
    with open(path, encoding="utf-8") as fh:
        p.feed(fh.read())
    p.close()
    return p


def test_templates_autoescape_every_string(tmp_path):
    """Token strings, labels and set names holding markup or template syntax come out as text: no
    element is added and each string reads back unchanged (no browser needed)."""
    from gemmascope.analysis.enrichment import EnrichmentResult

    V, S, T, d_sae = len(HOSTILE) + 4, 3, 16, 3
    vocab = HOSTILE + [f" w{i}" for i in range(4)]
    tokens = np.arange(S * T).reshape(S, T) % (V - 1) + 1  # every row holds most tokens
    tokens[:, 0] = 0
    codes = np.zeros((S, T, d_sae), np.float32)
    codes[..., 0] = np.where(tokens <= len(HOSTILE) - 1, 1.0 + tokens, 0.0)  # fires on the hostile tokens
    codes[..., 1] = np.where(tokens == V - 1, 1.0, 0.0)  # fires on " w3" only
    # one hostile token is never encoded (a dropped norm outlier): every span kind shows hostile text
    res = dash.scan_codes(tokens, tokens != 0, codes, k=3, valid=tokens != 4)  # 4: "</div><b>"
    rng = np.random.default_rng(0)
    lens = ll.logit_lens(
        rng.standard_normal((d_sae, 6)).astype(np.float32), rng.standard_normal((6, V)).astype(np.float32), k=V // 2
    )
    set_name = "<img src=x onerror=alert(1)> & {{ set }}"
    enr = EnrichmentResult(
        set_names=[set_name],
        set_sizes=np.array([3]),
        score=np.full((d_sae, 1), 0.9),
        pvalue=np.full((d_sae, 1), 1e-9),
        qvalue=np.full((d_sae, 1), 1e-9),
        correction="bh",
    )
    info = dash.SiteInfo(title="T <i>x</i> {{ t }}", model='m "q" <b>', layer=2, site="res", text="<u>text</u>")
    out = str(tmp_path / "site")
    dash.write_site(
        out,
        res,
        lens,
        tokens=vocab,
        latents=list(range(d_sae)),
        info=info,
        enrichment=enr,
        enrichment_floor={set_name: 0.5},
        log=None,
    )
    allowed = {
        "html",
        "head",
        "meta",
        "title",
        "link",
        "body",
        "header",
        "main",
        "div",
        "h1",
        "h2",
        "span",
        "small",
        "a",
        "p",
        "b",
        "svg",
        "line",
        "rect",
        "text",
        "input",
        "select",
        "option",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "script",
    }
    pages = [os.path.join(out, "index.html")]
    pages += [os.path.join(out, "latents", f"{i}.html") for i in range(d_sae)]
    for path in pages:
        page = _parse(path)
        assert set(page.tags) <= allowed, (path, set(page.tags) - allowed)
        text, attrs = "".join(page.text), " ".join(page.attrs)
        assert page.tags.count("b") == page.classes.count("stat")  # <b> only in the stat boxes
        assert "T <i>x</i> {{ t }}" in text  # the title, read back as text
        if path.endswith("index.html"):
            assert page.tags.count("script") == 1  # our script, and only ours
            assert "".join(page.scripts) == dash.static_text("index.js")
            assert 'm "q" <b> \u00b7 layer 2 \u00b7 site res' in text
            assert set_name.lower() in attrs  # search text of every row
        else:
            assert page.tags.count("script") == 0
            assert "<u>text</u>" in text
    for i in (0, 1):  # fired (0), not fired (1) and dropped (both) contexts
        page = _parse(os.path.join(out, "latents", f"{i}.html"))
        text, attrs = "".join(page.text), " ".join(page.attrs)
        assert f"{set_name}: score +0.90" in text  # enrichment, listed as text
        assert page.classes.count("t drop") >= 1 and page.classes.count("t focus") == 3
        for tok in HOSTILE[1:-2]:  # contexts: tokens as text, repr(token) in the hover title
            assert dash.context_text(tok) in text and repr(tok) in attrs
    with open(os.path.join(out, "style.css"), encoding="utf-8") as fh:
        assert fh.read() == dash.static_text("style.css")


def test_histogram_geometry_by_hand():
    """Counts [0, 2, 1, 0] over [0, 4] in the default 420x150 box: plot area x 40..400, y 8..122
    (height 114); bars only for the non-empty bins, heights 114 * count / 2; threshold 1 at x = 130."""
    svg = str(dash.histogram_svg(np.array([0, 2, 1, 0]), 0.0, 4.0, threshold=1.0))
    bars = re.findall(
        r'<rect class="bar" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"[^>]*>'
        r"<title>([^<]*)</title>",
        svg,
    )
    assert bars == [("130.5", "8.0", "89.0", "114.0", "1 to 2: 2"), ("220.5", "65.0", "89.0", "57.0", "2 to 3: 1")]
    assert '<line x1="130.0" y1="8" x2="130.0" y2="122" stroke="#24303f"' in svg
    assert "<title>threshold 1</title>" in svg
    assert re.findall(r'text-anchor="middle">([^<]*)</text>', svg) == ["0", "2", "4", "activation"]
    assert '<text x="36" y="17" text-anchor="end">2</text>' in svg  # the y axis: max count ...
    assert '<text x="36" y="122" text-anchor="end">0</text>' in svg  # ... and 0
    # a threshold outside (lo, hi] is not drawn; an empty histogram has no bars and y max 1
    assert "threshold" not in str(dash.histogram_svg(np.array([1, 1]), 0.0, 4.0, threshold=5.0))
    empty = str(dash.histogram_svg(np.zeros(4, int), 0.0, 1.0))
    assert "<rect" not in empty and '<text x="36" y="17" text-anchor="end">1</text>' in empty


def test_package_data_ships_the_templates_and_static_files():
    """Every file of dashboard_templates/ and dashboard_static/ matches a package_data pattern of
    setup.py (an installed package must render), and the templates the renderer loads are there."""
    import ast
    import fnmatch

    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as fh:
        call = next(
            n
            for n in ast.walk(ast.parse(fh.read()))
            if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"
        )
    package_data = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    patterns = package_data["gemmascope.analysis"]
    root = os.path.join(REPO, "gemmascope", "analysis")
    files = [
        os.path.relpath(os.path.join(d, f), root)
        for sub in ("dashboard_templates", "dashboard_static")
        for d, _, fs in os.walk(os.path.join(root, sub))
        for f in fs
        if "__pycache__" not in d
    ]
    assert {
        "dashboard_templates/latent.html",
        "dashboard_templates/index.html",
        "dashboard_static/style.css",
        "dashboard_static/index.js",
    } <= set(files)
    assert all(any(fnmatch.fnmatchcase(f, p) for p in patterns) for f in files), (files, patterns)
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as fh:
        assert '"jinja2"' in fh.read()


# ----------------------------------------------------------------------------------- scan vs oracle


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_scan_matches_a_numpy_oracle_over_several_batches(arch):
    """A tiny random Llama, three batches: counts, maxima, the top contexts merged across batches,
    the sparse entries and the norm-outlier rule all equal a dense numpy computation. Values agree to
    rtol 1e-4 / atol 1e-4: XLA and numpy sum the fp32 products in different orders (observed ~2e-5)."""
    import jax

    from gemmascope.lm import model
    from tests.tiny import tiny_llama

    cfg = tiny_llama(vocab_size=50, n_layers=2)
    params = model.init_params(jax.random.PRNGKey(0), cfg, std=0.5)
    rng = np.random.default_rng(0)
    d_sae, k_ctx = 24, 5
    W = rng.standard_normal((d_sae, 16)).astype(np.float32)
    sae = {
        "W_enc": W.T.copy(),
        "W_dec": W,
        "b_enc": rng.normal(0, 0.3, d_sae).astype(np.float32),
        "b_dec": np.zeros(16, np.float32),
    }
    if arch == "jumprelu":
        sae["threshold"] = rng.uniform(0.5, 2.0, d_sae).astype(np.float32)
    else:
        sae["k"] = np.asarray(3, np.float32)
    batches = []
    for _ in range(3):
        toks = rng.integers(3, 50, (4, 10)).astype(np.int32)
        toks[:, 0] = 1
        toks[1, 6] = 2  # an EOS inside a row
        batches.append((toks, toks >= 3))
    res = dash.scan(params, cfg, sae, layer=1, site="res", batches=batches, k=k_ctx, outlier_norm_factor=1.15, log=None)
    f_all, valid_all = [], []
    for toks, mask in batches:  # the oracle, batch by batch
        x = np.asarray(model.forward(params, toks, cfg, capture=[(1, "res")]).captures[(1, "res")], np.float32)
        n = np.linalg.norm(x, axis=-1)
        valid = mask & (n <= 1.15 * np.median(n[mask]))
        pre = x @ sae["W_enc"] + sae["b_enc"]
        if arch == "jumprelu":
            f = np.where(pre > sae["threshold"], pre, 0.0)
        else:
            kth = np.sort(pre, axis=-1)[..., -3][..., None]
            f = np.where(pre >= kth, np.maximum(pre, 0.0), 0.0)
        f_all.append(np.where(valid[..., None], f, 0.0))
        valid_all.append(valid)
    f = np.concatenate(f_all)  # [12, 10, d_sae]
    valid = np.concatenate(valid_all)
    assert res.n_tokens == valid.sum() and 0 < res.n_dropped == sum(m.sum() for _, m in batches) - valid.sum()
    np.testing.assert_array_equal(res.fire_counts, (f > 0).sum(axis=(0, 1)))
    np.testing.assert_allclose(res.act_max, f.max(axis=(0, 1)), rtol=1e-4)
    per_seq = f.max(axis=1)  # [12, d_sae]
    for i in range(d_sae):
        want = np.sort(per_seq[:, i])[::-1][:k_ctx]
        got = res.top_values[i]
        np.testing.assert_allclose(got[got > 0], want[want > 0], rtol=1e-4)
        for v, s, p in zip(res.top_values[i], res.top_seq[i], res.top_pos[i]):
            if v > 0:
                assert f[s, p, i] == pytest.approx(v, rel=1e-4) and per_seq[s, i] == pytest.approx(v, rel=1e-4)
        np.testing.assert_allclose(
            res.activations_at(i, np.arange(f.shape[0] * f.shape[1])), f[..., i].reshape(-1), rtol=1e-4, atol=1e-4
        )
    counts, upper = dash.histogram(res, list(range(d_sae)))
    np.testing.assert_array_equal(counts.sum(axis=1), res.fire_counts)
    # max_tokens stops after the batch that reaches it
    part = dash.scan(
        params,
        cfg,
        sae,
        layer=1,
        site="res",
        batches=batches,
        k=k_ctx,
        outlier_norm_factor=1.15,
        log=None,
        max_tokens=int(valid_all[0].sum()) + 1,
    )
    assert part.tokens.shape[0] == 8 and part.n_tokens == valid_all[0].sum() + valid_all[1].sum()


# ----------------------------------------------------------------------------------- attribution graph page


def _hand_graph():
    """A two-layer graph by hand: tokens t0..t2, features f(0,1,5) and f(1,2,7), two logits."""
    from gemmascope.circuits.attribution import Graph

    g = Graph(
        tokens=np.array([1, 9, 4]),
        active_features=np.array([[0, 1, 5], [1, 2, 7]]),
        activations=np.array([2.0, 1.5], np.float32),
        logit_tokens=np.array([11, 12]),
        logit_probabilities=np.array([0.6, 0.3], np.float32),
        adjacency=np.zeros((2 + 6 + 3 + 2,) * 2, np.float32),
        n_layers=2,
    )
    a, tok, err, lg = g.adjacency, g.token_start, g.error_start, g.logit_start
    a[0, tok + 1] = 4.0  # f05 <- t1
    a[1, 0], a[1, tok + 1] = 2.0, 1.0  # f17 <- f05, t1
    a[lg, 1], a[lg, err + 2], a[lg, tok + 2] = 3.0, -1.0, 0.5  # logit0 <- f17, error(0, 2), t2
    a[lg + 1, 0] = 1.0  # logit1 <- f05
    return g


def test_graph_page_draws_every_node_and_link_and_highlights_the_top_path(browser, tmp_path):
    from gemmascope.circuits import graph_file, page

    g = _hand_graph()
    rec = graph_file.graph_record(
        g, slug="hand", scan="t", prompt_tokens=["<bos>", "<b>x</b>", " y"], logit_texts=["A", "B"],
        node_threshold=1.0, edge_threshold=1.0,
    )  # fmt: skip
    assert page.top_path(rec, "3_11_2") == ["E_9_1", "0_5_1", "1_7_2", "3_11_2"]  # 1 * 2/3 * 3/4.5
    assert page.top_path(rec, "3_12_2") == ["E_9_1", "0_5_1", "3_12_2"]
    path = page.write_page(str(tmp_path), rec, feature_url="dash{layer}/latents/{feature}.html")
    d = _open(browser, path)
    assert len(_css(d, "svg circle")) == len(rec["nodes"]) and len(_css(d, "svg line.link")) == len(rec["links"])
    on = lambda: sorted(c.get_attribute("data-id") for c in _css(d, "circle.onpath"))  # noqa: E731
    assert on() == sorted(page.top_path(rec, "3_11_2"))
    assert len(_css(d, "line.link.onpath")) == 3 and len(_css(d, "line.link.neg")) == 1
    from selenium.webdriver.support.ui import Select

    Select(_css(d, "#logit")[0]).select_by_value("3_12_2")
    assert on() == sorted(page.top_path(rec, "3_12_2"))
    hrefs = sorted(d.execute_script("return [...document.querySelectorAll('svg a')].map(a => a.getAttribute('href'))"))
    assert hrefs == ["dash0/latents/5.html", "dash1/latents/7.html"]  # each to its own layer's dashboard
    assert _css(d, "#prompt")[0].text == "<bos><b>x</b> y"  # text, not markup
    assert d.execute_script("return performance.getEntriesByType('resource').length") == 0
