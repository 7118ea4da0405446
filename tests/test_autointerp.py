"""Auto-interp client and stage against a loopback OpenAI-compatible server with canned answers."""

from __future__ import annotations

import email.utils
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from saestab import autointerp as ai
from saestab.io import InputError

from .conftest import REPO

HOOK = "blocks.1.hook_resid_post"
KEY_ENV = "SAESTAB_TEST_API_KEY"


class FakeLLM:
    """A chat-completions endpoint on 127.0.0.1 (port 0) with planted answers.

    Explanation requests are answered from ``explanations[(anchor, feature)]`` (the feature is
    read from its contexts, which the fixture writes as ``a{anchor}f{feature}``); classification
    requests from ``classes[explanation]``. ``script`` is a list of (status, headers) or
    (status, headers, body) played before normal answers; ``fail_after`` makes every request
    after that many successes a 500. Clients made by :func:`client_for` are closed with it.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.explanations: dict[tuple[int, int], str] = {}
        self.classes: dict[str, str] = {}
        self.script: list[tuple[int, dict[str, str]]] = []
        self.fail_after: int | None = None
        self.delay = 0.0
        self.n_ok = 0
        self.clients: list[ai.ChatClient] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": body})
                    scripted = fake.script.pop(0) if fake.script else None
                    failing = fake.fail_after is not None and fake.n_ok >= fake.fail_after
                    delay, fake.delay = fake.delay, 0.0
                if delay:
                    time.sleep(delay)
                if scripted or failing:
                    status, headers, *body = scripted or (500, {})
                    out = body[0] if body else b'{"error": {"message": "canned failure"}}'
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                text = fake.answer(body["messages"])
                with fake.lock:
                    fake.n_ok += 1
                out = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answer(self, messages: list[dict]) -> str:
        user = messages[-1]["content"]
        if messages[0]["content"] == ai.CLASSIFY_SYSTEM:
            explanation = re.search(r'Explanation of a feature: "(.*)"', user).group(1)
            return self.classes.get(explanation, "SEMANTIC")
        m = re.search(r"a(\d+)f(\d+)", user)
        key = (int(m.group(1)), int(m.group(2))) if m else None
        return self.explanations.get(key, "Canned explanation.")

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return len(self.requests)
        system = ai.CLASSIFY_SYSTEM if kind == "classify" else ai.EXPLAIN_SYSTEM
        return sum(r["body"]["messages"][0]["content"] == system for r in self.requests)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def no_proxy(monkeypatch):
    """Requests to 127.0.0.1 go there directly, whatever proxy the environment names."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def llm(no_proxy):
    fake = FakeLLM()
    yield fake
    fake.close()


def client_for(fake: FakeLLM, sleeps: list | None = None, **kw) -> ai.ChatClient:
    cfg = dict(endpoint=fake.endpoint, model="test-model", api_key_env=KEY_ENV, timeout=5.0,
               retries=3, backoff=0.5, max_backoff=10.0, temperature=0.0, seed=7) | kw
    client = ai.ChatClient(ai.ClientConfig(**cfg),
                           sleep=(sleeps.append if sleeps is not None else lambda s: None))
    fake.clients.append(client)
    return client


def contexts_table(n_stable: int = 10, n_unstable: int = 10, n_contexts: int = 4,
                   anchors: tuple[int, ...] = (0,)) -> pd.DataFrame:
    """A top-contexts table in the function stage's layout; each context names its feature."""
    rows = []
    for anchor in anchors:
        for f in range(n_stable + n_unstable + 2):
            lab = "stable" if f < n_stable else "unstable" if f < n_stable + n_unstable \
                else "middle"
            for rank in range(n_contexts):
                rows.append({"anchor": anchor, "feature": f, "label": lab,
                             "p_hat": {"stable": 1.0, "unstable": 0.0, "middle": 0.5}[lab],
                             "frequency": 0.01 * (f + 1), "rank": rank,
                             "activation": 4.0 - rank, "token_id": 100 + f,
                             "token": f" tok{f}", "left": f"ctx a{anchor}f{f} r{rank}\nline",
                             "right": " after"})
    return pd.DataFrame(rows)


def plant(fake: FakeLLM, surface: dict[str, set[int]], unparsed: set[int] = frozenset(),
          anchor: int = 0, n: int = 22) -> None:
    """Explanation 'feature f ...' for each feature; SURFACE for the planted ones, a reply
    naming neither class for ``unparsed``, SEMANTIC otherwise."""
    planted = set().union(*surface.values())
    for f in range(n):
        text = f"Responds to pattern number {f} of anchor {anchor}."
        fake.explanations[(anchor, f)] = text
        fake.classes[text] = ("I am not sure." if f in unparsed else
                              "**Surface-form.**" if f in planted else "Semantic")


# --- request shape and parsing ---------------------------------------------------------------

def test_request_shape_and_auth_header(llm, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sekret-123")
    client = client_for(llm)
    body = client.payload([{"role": "user", "content": "hi"}], max_tokens=12)
    assert client.complete(body) == "Canned explanation."
    req = llm.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"] == {"model": "test-model", "messages": [{"role": "user", "content": "hi"}],
                           "temperature": 0.0, "max_tokens": 12, "seed": 7}
    assert req["headers"]["Authorization"] == "Bearer sekret-123"
    assert req["headers"]["Content-Type"] == "application/json"
    # no seed field when unset; no Authorization header when the variable is unset
    monkeypatch.delenv(KEY_ENV)
    client = client_for(llm, seed=None)
    client.complete(client.payload([{"role": "user", "content": "a1f2"}], max_tokens=5))
    assert "seed" not in llm.requests[1]["body"]
    assert "Authorization" not in llm.requests[1]["headers"]
    # an endpoint given with the full path is used as is
    assert ai.chat_url(llm.endpoint + "/chat/completions/") == llm.endpoint + "/chat/completions"


def test_prompt_marks_the_current_token():
    ctx = contexts_table(n_stable=1, n_unstable=0, n_contexts=3)
    ctx = ctx[ctx["feature"] == 0]
    msgs = ai.explain_messages(ctx)
    user = msgs[1]["content"]
    assert msgs[0]["role"] == "system" and msgs[1]["role"] == "user"
    # activations 4, 3, 2 on the 0-10 scale relative to the strongest; newline shown as ⏎
    assert "1. (activation 10) ctx a0f0 r0⏎line« tok0» after" in user
    assert "2. (activation 8) ctx a0f0 r1⏎line« tok0» after" in user
    assert "3. (activation 5) " in user and "4. " not in user
    assert ai.format_context("a\nb", ".", "c") == "a⏎b«.»c"


@pytest.mark.parametrize("text, expected", [
    ("SURFACE", "surface"), ("semantic", "semantic"), ("**Surface-form.**", "surface"),
    ("  Semantic.\n", "semantic"), ("<think>surface or semantic?</think>SEMANTIC", "semantic"),
    ("SURFACE\nIt is surface rather than semantic.", "surface"),
    ("It is not semantic but surface", None), ("I don't know", None), ("", None),
])
def test_parse_classification(text, expected):
    assert ai.parse_classification(text) == expected


def test_parse_explanation():
    assert ai.parse_explanation('Explanation: "The word  the\n at sentence start."') == \
        "The word the at sentence start."
    assert ai.parse_explanation("<think>hmm</think>\nCommas in lists.") == "Commas in lists."
    assert ai.parse_explanation("  \n") == ""


# --- retries and failures --------------------------------------------------------------------

def test_retries_on_500_and_429_then_success(llm):
    llm.script = [(500, {}), (429, {"Retry-After": "3"}), (502, {})]
    sleeps: list[float] = []
    client = client_for(llm, sleeps)
    text = client.complete(client.payload([{"role": "user", "content": "a0f1"}], 20))
    assert text == "Canned explanation."
    assert llm.count() == 4 and client.n_attempts == 4
    # exponential backoff 0.5, 1.0, 2.0; the 429's Retry-After lengthens the second wait to 3
    assert sleeps == [0.5, 3.0, 2.0]


def test_retry_after_timeout(llm):
    llm.delay = 1.5
    client = client_for(llm, timeout=0.3)
    assert client.complete(client.payload([{"role": "user", "content": "x"}], 5))
    assert llm.count() == 2


def test_persistent_failure_names_the_endpoint(llm):
    llm.fail_after = 0
    sleeps: list[float] = []
    client = client_for(llm, sleeps, retries=2)
    with pytest.raises(ai.AutoInterpError, match=re.escape(llm.endpoint + "/chat/completions")) \
            as err:
        client.complete(client.payload([{"role": "user", "content": "x"}], 5))
    assert "after 3 attempts" in str(err.value) and "HTTP 500" in str(err.value)
    assert llm.count() == 3 and sleeps == [0.5, 1.0]


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_error_is_not_retried(llm, status):
    llm.script = [(status, {"Retry-After": "1"}, b'{"error": {"message": "bad max_tokens"}}')]
    sleeps: list[float] = []
    client = client_for(llm, sleeps)
    with pytest.raises(ai.AutoInterpError, match=re.escape(llm.endpoint + "/chat/completions")
                       + rf" rejected the request \(HTTP {status} .*bad max_tokens") as err:
        client.complete(client.payload([{"role": "user", "content": "x"}], 5))
    assert isinstance(err.value.__cause__, httpx.HTTPStatusError)
    assert llm.count() == 1 and client.n_attempts == 1 and sleeps == []


@pytest.mark.parametrize("status, retry_after, wait", [
    (429, "3", 3.0),  # longer than the backoff (0.5): the server's wait
    (503, "3", 3.0),  # honoured on a 5xx as well
    (429, "0.2", 0.5),  # shorter than the backoff: the backoff
    (429, "120", 10.0),  # capped at max_backoff
    (429, "soon", 0.5),  # unreadable: the backoff
])
def test_retry_after_sets_the_wait(llm, status, retry_after, wait):
    llm.script = [(status, {"Retry-After": retry_after})]
    sleeps: list[float] = []
    client = client_for(llm, sleeps)
    assert client.complete(client.payload([{"role": "user", "content": "x"}], 5))
    assert llm.count() == 2 and sleeps == [wait]


def test_retry_after_as_http_date(llm):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    llm.script = [(429, {"Retry-After": when})]
    sleeps: list[float] = []
    client = client_for(llm, sleeps, max_backoff=60.0)
    assert client.complete(client.payload([{"role": "user", "content": "x"}], 5))
    assert len(sleeps) == 1 and 25.0 < sleeps[0] <= 30.0  # the date has whole seconds


def test_timeouts_exhausted_name_the_timeout(llm):
    llm.delay = 1.0
    client = client_for(llm, timeout=0.2, retries=0)
    with pytest.raises(ai.AutoInterpError, match="failed after 1 attempts; last error: "
                                                 "ReadTimeout"):
        client.complete(client.payload([{"role": "user", "content": "x"}], 5))


def test_redirect_and_invalid_json_are_errors(llm):
    llm.script = [(307, {"Location": "http://elsewhere.invalid/v1/chat/completions"})]
    client = client_for(llm)
    with pytest.raises(ai.AutoInterpError, match="rejected the request \\(HTTP 307 Temporary "
                                                 "Redirect to http://elsewhere.invalid/"):
        client.complete(client.payload([{"role": "user", "content": "x"}], 5))
    llm.script = [(200, {"Content-Type": "application/json"}, b"<html>not json</html>")]
    with pytest.raises(ai.AutoInterpError, match="answered with invalid JSON: b'<html>"):
        client.complete(client.payload([{"role": "user", "content": "x"}], 5))
    llm.script = [(200, {"Content-Type": "application/json"}, b'{"choices": []}')]
    with pytest.raises(ai.AutoInterpError, match="expected choices\\[0\\].message.content"):
        client.complete(client.payload([{"role": "user", "content": "x"}], 5))
    assert llm.count() == 3


def test_connection_refused_fails_after_retries(no_proxy):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    cfg = ai.ClientConfig(endpoint=f"http://127.0.0.1:{port}/v1", model="m", retries=2,
                          backoff=1.0)
    with ai.ChatClient(cfg, sleep=sleeps.append) as client, \
            pytest.raises(ai.AutoInterpError, match=f"127.0.0.1:{port}/v1/chat/completions "
                                                    "failed after 3 attempts; last error: "
                                                    "ConnectError"):
        client.complete(client.payload([{"role": "user", "content": "x"}], 5))
    assert sleeps == [1.0, 2.0] and client.n_attempts == 3


def test_unset_endpoint_is_a_clear_error():
    with pytest.raises(ai.AutoInterpError, match="autointerp.endpoint is not set"):
        ai.ClientConfig.from_config({"endpoint": None})


# --- the stage: sampling, resume, summary ----------------------------------------------------

def test_summary_numbers_on_planted_answers(llm, tmp_path):
    ctx = contexts_table()  # features 0-9 stable, 10-19 unstable, 20-21 middle
    plant(llm, {"stable": {1, 4}, "unstable": {10, 11, 12, 13, 15, 16, 19}}, unparsed={18})
    cache = ai.RequestCache(tmp_path / "requests.jsonl")
    table, counts = ai.explain_features(ctx, client_for(llm), cache, max_contexts=2)
    assert len(table) == 20 and set(table["label"]) == {"stable", "unstable"}
    assert counts == {"asked": 40, "cached": 0} and llm.count() == 40
    assert (table["n_contexts"] == 2).all()
    row = table.set_index("feature").loc[1]
    assert row["explanation"] == "Responds to pattern number 1 of anchor 0."
    assert row["classification"] == "surface" and row["classification_raw"] == "**Surface-form.**"
    assert pd.isna(table.set_index("feature").loc[18, "classification"])
    s = ai.summarize(table)
    st, un = s["labels"]["stable"], s["labels"]["unstable"]
    assert (st["n_surface"], st["n_semantic"], st["n_unparsed"]) == (2, 8, 0)
    assert (un["n_surface"], un["n_semantic"], un["n_unparsed"]) == (7, 2, 1)
    assert st["surface_share"] == pytest.approx(0.2)
    assert un["surface_share"] == pytest.approx(7 / 9)
    assert s["unstable_minus_stable"] == pytest.approx(7 / 9 - 0.2)
    ci = stats.binomtest(7, 9).proportion_ci(method="wilson")
    assert (un["ci_low"], un["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert 0.4 < un["ci_low"] < 0.5 and 0.93 < un["ci_high"] < 0.97  # Wilson (7, 9)
    # one anchor: the seed-level interval is undefined, not a zero-width one
    assert un["seed_level"]["n"] == 1 and np.isnan(un["seed_level"]["ci_low"])
    # three anchors with shares 0.5, 0.75, 1: their mean with the t interval over anchors
    three = pd.DataFrame({"anchor": np.repeat([0, 1, 2], 4), "label": "unstable",
                          "classification": ["surface", "semantic"] * 2 + ["surface"] * 3
                          + ["semantic"] + ["surface"] * 4})
    sl = ai.summarize(three)["labels"]["unstable"]["seed_level"]
    assert sl["mean"] == pytest.approx(0.75) and sl["n"] == 3
    assert sl["ci_high"] - 0.75 == pytest.approx(float(stats.t.ppf(0.975, 2)) * 0.25 / np.sqrt(3))
    # outputs written atomically; nothing else left in the folder but the cache
    ai.write_outputs(table, s, tmp_path / "explanations.parquet", tmp_path / "summary.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explanations.parquet",
                                                          "requests.jsonl", "summary.json"]
    back = pd.read_parquet(tmp_path / "explanations.parquet")
    assert list(back.columns) == list(ai.EXPLANATION_COLUMNS) and len(back) == 20
    assert json.loads((tmp_path / "summary.json").read_text())["labels"]["stable"]["n_surface"] \
        == 2


def test_feature_sampling_is_seeded_per_label():
    ctx = contexts_table(anchors=(0, 3))
    a = ai.select_features(ctx, ["stable", "unstable"], n_features=5, seed=1)
    b = ai.select_features(ctx, ["stable", "unstable"], n_features=5, seed=1)
    c = ai.select_features(ctx, ["stable", "unstable"], n_features=5, seed=2)
    assert a.equals(b) and not a.equals(c)
    assert a["label"].value_counts().to_dict() == {"stable": 5, "unstable": 5}
    assert set(a["anchor"]) <= {0, 3}
    assert len(ai.select_features(ctx, ["middle"], None, 0)) == 4  # 2 per anchor, all kept


def test_resume_skips_answered_features(llm, tmp_path):
    ctx = contexts_table(n_stable=4, n_unstable=4)
    plant(llm, {"unstable": {4, 5}})
    path = tmp_path / "requests.jsonl"
    # reference: an uninterrupted run
    ref, _ = ai.explain_features(ctx, client_for(llm), ai.RequestCache(tmp_path / "ref.jsonl"))
    assert llm.count() == 16
    # interrupted after 5 answers (explain, classify x2, explain): the job fails naming the URL
    llm.requests.clear()
    llm.n_ok, llm.fail_after = 0, 5
    with pytest.raises(ai.AutoInterpError, match="failed after 1 attempts"):
        ai.explain_features(ctx, client_for(llm, retries=0), ai.RequestCache(path))
    assert len(ai.RequestCache(path)) == 5
    with open(path, "a") as fh:  # a line cut short by the interruption
        fh.write('{"anchor": 0, "feature": 3, "ki')
    # resumed: only the 11 missing answers are asked
    llm.requests.clear()
    llm.fail_after = None
    table, counts = ai.explain_features(ctx, client_for(llm), ai.RequestCache(path))
    assert llm.count() == 11 and counts == {"asked": 11, "cached": 5}
    assert llm.count("explain") == 8 - 3 and llm.count("classify") == 8 - 2
    pd.testing.assert_frame_equal(table, ref)
    # a third run asks nothing; a different model (another prompt hash) asks everything again
    llm.requests.clear()
    ai.explain_features(ctx, client_for(llm), ai.RequestCache(path))
    assert llm.count() == 0
    ai.explain_features(ctx, client_for(llm, model="other"), ai.RequestCache(path))
    assert llm.count() == 16


def test_read_contexts_names_file_and_columns(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ai.read_contexts(tmp_path / "none.parquet")
    bad = tmp_path / "bad.parquet"
    contexts_table().drop(columns=["token"]).to_parquet(bad)
    with pytest.raises(InputError, match=r"bad.parquet: .*lacks columns \['token'\]"):
        ai.read_contexts(bad)


def test_figure(tmp_path):
    from saestab.plotting import autointerp as fig

    configs = []
    for w, v, (xs, xu) in (("trained", "topk", (2, 7)), ("trained", "relu", (1, 5)),
                           ("random", "topk", (0, 10))):  # shares 0 and 1 at the edges
        d = tmp_path / w / v
        table = pd.DataFrame({"label": ["stable"] * 10 + ["unstable"] * 10,
                              "classification": ["surface"] * xs + ["semantic"] * (10 - xs)
                              + ["surface"] * xu + ["semantic"] * (10 - xu)})
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(ai.summarize(table)))
        configs.append(dict(model="tiny", weights=w, hook=HOOK, variant=v, dir=str(d)))
    out = tmp_path / "fig" / "surface_share.png"
    fig.surface_share(configs, out)
    assert out.stat().st_size > 5000


# --- the Snakemake rules ---------------------------------------------------------------------

def dry_run(workdir: Path, configfile: Path) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(configfile), "-n", "--quiet",
           "rules", "--cores", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def job_counts(out: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", out, re.MULTILINE)}


def test_rule_in_dag_only_when_endpoint_set(tmp_path):
    cfg = yaml.safe_load((REPO / "tests" / "config.yaml").read_text())
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "doc.txt").write_text("word " * 50)
    # the function stage's tables, so that the DAG builds whether or not its rule exists
    for w, v in (("trained", "topk"), ("trained", "relu"), ("trained", "topk-dataseed"),
                 ("random", "topk")):
        d = tmp_path / "results" / "tiny" / w / HOOK / "function" / v
        d.mkdir(parents=True)
        (d / "top_contexts.parquet").touch()
    unset = tmp_path / "unset.yaml"
    unset.write_text(yaml.safe_dump(cfg))
    counts = job_counts(dry_run(tmp_path, unset))
    assert counts.get("stability_census") == 6  # the study's 4 configurations + 2 synthetic models
    assert "autointerp" not in counts and "autointerp_figure" not in counts
    cfg["autointerp"] = {"endpoint": "http://127.0.0.1:9/v1", "n_features": 3}
    on = tmp_path / "on.yaml"
    on.write_text(yaml.safe_dump(cfg))
    counts = job_counts(dry_run(tmp_path, on))
    assert counts["autointerp"] == 4 and counts["autointerp_figure"] == 1
    assert counts.get("stability_census") == 6


@pytest.mark.workflow
def test_rules_run_against_loopback(llm, tmp_path):
    """The two rules on planted top-contexts tables (other rules not allowed to run)."""
    cfg = yaml.safe_load((REPO / "tests" / "config.yaml").read_text())
    cfg["sae"]["runs"] = {"trained": ["topk"], "random": ["topk"]}
    cfg["autointerp"] = {"endpoint": llm.endpoint, "n_features": 6, "api_key_env": KEY_ENV}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    plant(llm, {"unstable": {10, 11, 12}})
    for w in ("trained", "random"):
        d = tmp_path / "results" / "tiny" / w / HOOK / "function" / "topk"
        d.mkdir(parents=True)
        contexts_table().to_parquet(d / "top_contexts.parquet")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
           "--cores", "1", "--allowed-rules", "autointerp", "autointerp_figure", "--",
           "results/figures/autointerp/surface_share.png"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, KEY_ENV: "sekret-xyz"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert llm.count() == 2 * 2 * 12  # 2 configurations x 12 features x (explain + classify)
    assert all(r["headers"]["Authorization"] == "Bearer sekret-xyz" for r in llm.requests)
    for w in ("trained", "random"):
        d = tmp_path / "results" / "tiny" / w / HOOK / "autointerp" / "topk"
        s = json.loads((d / "summary.json").read_text())
        n = s["labels"]["unstable"]
        picked = pd.read_parquet(d / "explanations.parquet")
        planted = int(np.isin(picked.loc[picked["label"] == "unstable", "feature"],
                              [10, 11, 12]).sum())
        assert n["n_features"] == 6 and n["n_surface"] == planted
        assert s["labels"]["stable"]["n_surface"] == 0
        assert s["requests"] == {"asked": 24, "cached": 0} and s["configuration"]["weights"] == w
        assert "sekret" not in (d / "summary.json").read_text()
        assert "sekret" not in (d / "requests.jsonl").read_text()
    assert (tmp_path / "results/figures/autointerp/surface_share.png").stat().st_size > 5000
