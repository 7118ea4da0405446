"""Optional automatic explanations of SAE features from an OpenAI-compatible chat endpoint.

For a sample of stable and unstable features, the strongest activating contexts (with the
current token marked «like this») are sent to ``{endpoint}/chat/completions``; the explanation
that comes back is then classified by the same endpoint as describing a *surface-form* trigger
(a token string, a spelling, punctuation, formatting) or a *semantic* property. The share of
surface-form explanations, stable vs unstable and trained vs random weights, is the auto-interp
side of claim C4; the offline token-level measures do not depend on it.

Requests go through httpx (timeouts, connection reuse, proxies from the environment) and are
retried by tenacity on 429, 5xx and failures to connect or receive, waiting at least as long as
a Retry-After header asks. The API key is read from an environment variable whose *name* is
configured; the key itself is never written anywhere.

Every finished request is appended to a JSONL cache keyed by (anchor, feature, kind, prompt
hash), so an interrupted run asks again only what it had not received.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import tenacity

from . import io, logs, resampling
from .stability import wilson_interval

SURFACE = "surface"
SEMANTIC = "semantic"
CONTEXT_COLUMNS = ("anchor", "feature", "label", "p_hat", "frequency", "rank", "activation",
                   "token", "left", "right")
EXPLANATION_COLUMNS = ("anchor", "feature", "label", "p_hat", "frequency", "n_contexts",
                       "explanation", "explanation_raw", "classification", "classification_raw",
                       "explain_hash", "classify_hash")

EXPLAIN_SYSTEM = (
    "You are an interpretability researcher studying one latent (a feature) of a sparse "
    "autoencoder trained on a language model's internal activations. You are shown the text "
    "excerpts on which the feature activates most strongly. In each excerpt the token where it "
    "fires is marked «like this», and its activation is given on a 0-10 scale relative to the "
    "strongest one. Line breaks in the text are shown as ⏎."
)
EXPLAIN_INSTRUCTION = (
    "In one short sentence (at most 25 words), say what this feature responds to. Be specific: "
    "if it fires on a particular token, word, spelling or punctuation mark, say so; if it "
    "tracks a meaning, topic or role shared by different words, say that. Answer with the "
    "explanation only."
)
CLASSIFY_SYSTEM = "You classify explanations of features of a language model."
CLASSIFY_INSTRUCTION = (
    "Does this explanation describe a SURFACE-form trigger (one specific token or string, a "
    "word piece, a spelling, capitalisation, punctuation, whitespace, digits or formatting) or "
    "a SEMANTIC property (a meaning, topic, concept, or a grammatical or contextual role that "
    "different strings share)? Answer with exactly one word: SURFACE or SEMANTIC."
)


class AutoInterpError(RuntimeError):
    """The endpoint could not be used; the message names the endpoint and the last error."""


@dataclass(frozen=True)
class ClientConfig:
    """How to reach an OpenAI-compatible chat-completions endpoint."""

    endpoint: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 60.0
    retries: int = 4
    backoff: float = 2.0
    max_backoff: float = 60.0
    temperature: float = 0.0
    seed: int | None = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ClientConfig:
        """From the config's ``autointerp`` section (``endpoint`` must be set)."""
        if not cfg.get("endpoint"):
            raise AutoInterpError("autointerp.endpoint is not set in the config: the optional "
                                  "auto-interp stage needs an OpenAI-compatible endpoint")
        return cls(endpoint=cfg["endpoint"], model=cfg["model"],
                   api_key_env=cfg.get("api_key_env"), timeout=float(cfg["timeout"]),
                   retries=int(cfg["retries"]), backoff=float(cfg["backoff"]),
                   max_backoff=float(cfg["max_backoff"]),
                   temperature=float(cfg["temperature"]), seed=cfg.get("seed"))


def chat_url(endpoint: str) -> str:
    """``{endpoint}/chat/completions``, unless the endpoint already names that path."""
    url = endpoint.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def retry_after(response: httpx.Response) -> float | None:
    """Seconds a response's Retry-After header asks to wait (delta-seconds or an HTTP date;
    None when absent or unreadable)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def transient(err: BaseException) -> bool:
    """Whether a failed request is worth another try: HTTP 429, a 5xx, or a transport failure
    (connecting, sending, receiving, timeouts). Other statuses mean the request itself is wrong."""
    if isinstance(err, httpx.HTTPStatusError):
        code = err.response.status_code
        return code == 429 or code >= 500
    return isinstance(err, httpx.TransportError)


def describe(err: BaseException) -> str:
    """One line for an error: the status, reason and start of the body, or the failure."""
    if isinstance(err, httpx.HTTPStatusError):
        r = err.response
        moved = f" to {r.headers['Location']}" if r.is_redirect else ""
        return f"HTTP {r.status_code} {r.reason_phrase}{moved}: {r.text[:300]}"
    return f"{type(err).__name__}: {err}"


class ChatClient:
    """A chat-completions client: JSON POST, timeout, retries with exponential backoff on 429,
    5xx and transport errors (lengthened to Retry-After, capped at ``max_backoff``), and errors
    that name the endpoint. Close it, or use it as a context manager, to release connections.

    ``sleep`` and ``environ`` are injectable for tests.
    """

    def __init__(self, cfg: ClientConfig, *, sleep: Callable[[float], None] = time.sleep,
                 environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.url = chat_url(cfg.endpoint)
        env = os.environ if environ is None else environ
        api_key = env.get(cfg.api_key_env) if cfg.api_key_env else None
        self.n_attempts = 0
        self.log = logs.get_logger("autointerp")
        if cfg.api_key_env and not api_key:
            self.log.warning("environment variable %s is not set: requests to %s carry no "
                             "Authorization header", cfg.api_key_env, self.url)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(headers=headers, timeout=cfg.timeout)
        self._backoff = tenacity.wait_exponential(multiplier=cfg.backoff, max=cfg.max_backoff)
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(cfg.retries + 1), wait=self._wait,
            retry=tenacity.retry_if_exception(transient), sleep=sleep,
            before_sleep=self._log_retry)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def payload(self, messages: Sequence[Mapping[str, str]], max_tokens: int) -> dict[str, Any]:
        """The request body: deterministic settings (temperature, and a seed when set)."""
        body: dict[str, Any] = {"model": self.cfg.model, "messages": [dict(m) for m in messages],
                                "temperature": self.cfg.temperature, "max_tokens": max_tokens}
        if self.cfg.seed is not None:
            body["seed"] = self.cfg.seed
        return body

    def request_hash(self, body: Mapping[str, Any]) -> str:
        """SHA-256 of the URL and the canonical JSON body (the key of the request cache)."""
        blob = json.dumps({"url": self.url, "body": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _wait(self, state: tenacity.RetryCallState) -> float:
        # tenacity has no Retry-After strategy that keeps the backoff as a floor and the cap
        wait = self._backoff(state)
        err = state.outcome.exception() if state.outcome else None
        hint = retry_after(err.response) if isinstance(err, httpx.HTTPStatusError) else None
        return wait if hint is None else min(max(wait, hint), self.cfg.max_backoff)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        self.log.warning("%s: %s; retry %d/%d in %.1fs", self.url, describe(err),
                         state.attempt_number, self.cfg.retries, wait)

    def _send(self, data: bytes) -> httpx.Response:
        self.n_attempts += 1
        return self._http.post(self.url, content=data).raise_for_status()

    def post(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body``; retry transient failures; return the decoded JSON response."""
        data = json.dumps(body).encode()
        try:
            resp = self._retrying(self._send, data)
        except tenacity.RetryError as err:
            last = err.last_attempt
            raise AutoInterpError(f"{self.url} failed after {last.attempt_number} attempts; "
                                  f"last error: {describe(last.exception())}"
                                  ) from last.exception()
        except httpx.HTTPStatusError as err:
            raise AutoInterpError(f"{self.url} rejected the request ({describe(err)})") from err
        except httpx.HTTPError as err:  # not retried: e.g. an invalid URL, a bad encoding
            raise AutoInterpError(f"{self.url}: {describe(err)}") from err
        try:
            return resp.json()
        except ValueError as err:
            raise AutoInterpError(f"{self.url} answered with invalid JSON: "
                                  f"{resp.content[:200]!r}") from err

    def complete(self, body: Mapping[str, Any]) -> str:
        """The text of the first choice of a chat completion."""
        resp = self.post(body)
        try:
            content = resp["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise AutoInterpError(f"{self.url}: expected choices[0].message.content in the "
                                  f"response, got {json.dumps(resp)[:300]}") from err
        return "" if content is None else str(content)


class RequestCache:
    """Append-only JSONL of finished requests, keyed by (anchor, feature, kind, prompt hash).

    Each answer is flushed and synced as it arrives; a line cut short by an interruption is
    ignored when the file is read again.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._records: dict[tuple[int, int, str, str], dict[str, Any]] = {}
        if self.path.is_file():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # end a line cut short, so appends start anew
                with open(self.path, "a") as fh:
                    fh.write("\n")
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                    self._records[self._key(rec)] = rec
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    @staticmethod
    def _key(rec: Mapping[str, Any]) -> tuple[int, int, str, str]:
        return int(rec["anchor"]), int(rec["feature"]), str(rec["kind"]), str(rec["hash"])

    def __len__(self) -> int:
        return len(self._records)

    def get(self, anchor: int, feature: int, kind: str, digest: str) -> dict[str, Any] | None:
        return self._records.get((int(anchor), int(feature), kind, digest))

    def put(self, rec: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(dict(rec), ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._records[self._key(rec)] = dict(rec)


def format_context(left: str, token: str, right: str) -> str:
    """One excerpt on one line, the current token marked «like this»."""
    return "".join([left, "«", token, "»", right]).replace("\r", "").replace("\n", "⏎")


def explain_messages(contexts: pd.DataFrame) -> list[dict[str, str]]:
    """Chat messages asking for an explanation of one feature from its top contexts
    (rows ordered by rank; activations shown on a 0-10 scale relative to the strongest)."""
    top = float(contexts["activation"].max())
    lines = []
    for i, row in enumerate(contexts.itertuples(index=False), 1):
        scaled = int(round(10 * float(row.activation) / top)) if top > 0 else 0
        lines.append(f"{i}. (activation {scaled}) "
                     f"{format_context(str(row.left), str(row.token), str(row.right))}")
    user = "Top activating excerpts:\n" + "\n".join(lines) + "\n\n" + EXPLAIN_INSTRUCTION
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def classify_messages(explanation: str) -> list[dict[str, str]]:
    """Chat messages asking whether an explanation is surface-form or semantic."""
    user = f'Explanation of a feature: "{explanation}"\n\n{CLASSIFY_INSTRUCTION}'
    return [{"role": "system", "content": CLASSIFY_SYSTEM}, {"role": "user", "content": user}]


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_PREFIX = re.compile(r"^\s*(explanation|answer)\s*:\s*", re.IGNORECASE)
_CLASS = re.compile(r"SURFACE|SEMANTIC")


def parse_explanation(text: str) -> str:
    """The explanation without reasoning blocks, an 'Explanation:' prefix or enclosing quotes
    (empty if nothing is left)."""
    text = _THINK.sub("", text).strip()
    text = _PREFIX.sub("", text).strip()
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def parse_classification(text: str) -> str | None:
    """``surface``, ``semantic`` or None when the answer names neither or is ambiguous.

    The first non-empty line decides when it names only one class (``**Surface-form.**``,
    ``SEMANTIC``); otherwise the whole answer, if it names only one.
    """
    text = _THINK.sub("", text).upper()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for chunk in (lines[:1], lines):
        found = set(_CLASS.findall("\n".join(chunk)))
        if len(found) == 1:
            return found.pop().lower()
    return None


def read_contexts(path: str | os.PathLike) -> pd.DataFrame:
    """The function stage's ``top_contexts.parquet``, checked for the columns used here."""
    path = Path(path)
    if not path.is_file():
        raise io.InputError(f"{path}: expected a top-contexts table (Parquet), but the file "
                            "does not exist")
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several kinds
        raise io.InputError(f"{path}: expected a top-contexts table (Parquet): {err}") from err
    missing = [c for c in CONTEXT_COLUMNS if c not in df.columns]
    if missing:
        raise io.InputError(f"{path}: top-contexts table lacks columns {missing}; expected "
                            f"{list(CONTEXT_COLUMNS)}")
    return df


def select_features(contexts: pd.DataFrame, labels: Sequence[str], n_features: int | None,
                    seed: int) -> pd.DataFrame:
    """(anchor, feature, label, p_hat, frequency) of up to ``n_features`` features per label,
    a seeded random subset of those in the table, ordered by label then (anchor, feature)."""
    feats = (contexts.groupby(["anchor", "feature"], sort=True)
             .agg(label=("label", "first"), p_hat=("p_hat", "first"),
                  frequency=("frequency", "first")).reset_index())
    rng = np.random.default_rng(seed)
    parts = []
    for lab in labels:
        sub = feats[feats["label"] == lab]
        if n_features is not None and len(sub) > n_features:
            idx = np.sort(rng.choice(len(sub), size=n_features, replace=False))
            sub = sub.iloc[idx]
        parts.append(sub)
    cols = ["anchor", "feature", "label", "p_hat", "frequency"]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols]


def _ask(client: ChatClient, cache: RequestCache, anchor: int, feature: int, kind: str,
         messages: list[dict[str, str]], max_tokens: int) -> tuple[str, str, bool]:
    """(answer text, request hash, whether it came from the cache)."""
    body = client.payload(messages, max_tokens)
    digest = client.request_hash(body)
    hit = cache.get(anchor, feature, kind, digest)
    if hit is not None:
        return str(hit["response"]), digest, True
    text = client.complete(body)
    cache.put({"anchor": anchor, "feature": feature, "kind": kind, "hash": digest,
               "model": client.cfg.model, "response": text})
    return text, digest, False


def explain_features(contexts: pd.DataFrame, client: ChatClient, cache: RequestCache, *,
                     labels: Sequence[str] = ("stable", "unstable"),
                     n_features: int | None = None, max_contexts: int = 10, seed: int = 0,
                     explain_max_tokens: int = 120, classify_max_tokens: int = 10
                     ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Explain and classify a sample of features; return one row per feature
    (:data:`EXPLANATION_COLUMNS`) and request counts (``asked``, ``cached``)."""
    log = logs.get_logger("autointerp")
    chosen = select_features(contexts, labels, n_features, seed)
    grouped = {k: g for k, g in contexts.groupby(["anchor", "feature"], sort=False)}
    counts = {"asked": 0, "cached": 0}
    rows = []
    for f in logs.progress(list(chosen.itertuples(index=False)), desc="auto-interp",
                           unit="feature"):
        anchor, feature = int(f.anchor), int(f.feature)
        ctx = grouped[(f.anchor, f.feature)].sort_values("rank").head(max_contexts)
        raw, h1, c1 = _ask(client, cache, anchor, feature, "explain", explain_messages(ctx),
                           explain_max_tokens)
        explanation = parse_explanation(raw)
        if explanation:
            craw, h2, c2 = _ask(client, cache, anchor, feature, "classify",
                                classify_messages(explanation), classify_max_tokens)
            klass = parse_classification(craw)
        else:
            craw, h2, c2, klass = "", "", True, None
            log.warning("anchor %d feature %d: empty explanation", anchor, feature)
        for cached in (c1, c2):
            counts["cached" if cached else "asked"] += 1
        rows.append({"anchor": anchor, "feature": feature, "label": f.label,
                     "p_hat": float(f.p_hat), "frequency": float(f.frequency),
                     "n_contexts": len(ctx), "explanation": explanation,
                     "explanation_raw": raw, "classification": klass,
                     "classification_raw": craw, "explain_hash": h1, "classify_hash": h2})
    return pd.DataFrame(rows, columns=list(EXPLANATION_COLUMNS)), counts


def summarize(explanations: pd.DataFrame, labels: Sequence[str] = ("stable", "unstable"),
              alpha: float = 0.05) -> dict[str, Any]:
    """Per label: counts and the share of surface-form explanations among the classified ones,
    with a Wilson interval (features as the unit); with an ``anchor`` column, also
    ``seed_level``: each anchor SAE's share as one value, their mean with its interval over the
    anchors (:func:`saestab.resampling.mean_of`; NaN with fewer than three). And the
    unstable − stable difference of shares."""
    out: dict[str, Any] = {"labels": {}}
    for lab in labels:
        sub = explanations[explanations["label"] == lab]
        n_surface = int((sub["classification"] == SURFACE).sum())
        n_semantic = int((sub["classification"] == SEMANTIC).sum())
        n = n_surface + n_semantic
        lo, hi = wilson_interval(n_surface, n, alpha)
        out["labels"][lab] = {
            "n_features": int(len(sub)), "n_surface": n_surface, "n_semantic": n_semantic,
            "n_unparsed": int(len(sub) - n), "surface_share": n_surface / n if n else None,
            "ci_low": float(lo), "ci_high": float(hi)}
        classified = sub[sub["classification"].isin([SURFACE, SEMANTIC])]
        if "anchor" in sub and len(classified):
            per_anchor = (classified["classification"] == SURFACE).groupby(
                classified["anchor"]).mean().to_numpy(np.float64)
            iv = resampling.mean_of(per_anchor, alpha)
            out["labels"][lab]["seed_level"] = {k: v for k, v in iv.items()
                                                if k != "replicates"}
    shares = {k: v["surface_share"] for k, v in out["labels"].items()}
    if shares.get("stable") is not None and shares.get("unstable") is not None:
        out["unstable_minus_stable"] = shares["unstable"] - shares["stable"]
    out["alpha"] = alpha
    return out


def write_outputs(explanations: pd.DataFrame, summary: Mapping[str, Any],
                  explanations_path: str | os.PathLike, summary_path: str | os.PathLike) -> None:
    """Write the explanations table and the summary atomically."""
    with io.atomic_path(explanations_path, suffix=".parquet") as tmp:
        explanations.to_parquet(tmp, index=False)
    io.write_json(summary_path, summary)
