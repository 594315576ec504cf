"""Calls to an OpenAI-compatible chat model: cached on disk, bounded, retried and counted.

`CachedChat.ask_many` sends chat requests through the `openai` client to any OpenAI-compatible server
(`base_url`: OpenAI, vLLM, llama.cpp's server, ollama). Every reply is stored in a SQLite file keyed by
the model, the messages, the sampling settings and the attempt number, and committed as it arrives, so
a rerun, or a run after an interruption, asks only what was never answered. A reply the caller cannot
parse is asked again (a new attempt, its own cache entry) up to `reasks` times, then counted as
unparseable. 429, 5xx, time-outs and dropped connections are retried by the openai client itself (its
exponential backoff, honouring Retry-After) up to `retries` times; every HTTP request is counted through
the client's transport. Any other error, or retries exhausted, raises `LLMCallError` naming the call and
why, after the calls already in flight have finished and been stored. The API key comes from the
environment or `.env` (pipeline/secrets.py) and is never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable


class LLMCallError(RuntimeError):
    """A call that failed for good; what was answered before it is in the cache."""


@dataclass(frozen=True)
class ChatSettings:
    model: str = "gpt-4.1-mini"
    base_url: str | None = None
    temperature: float = 0.0
    max_tokens: int = 10
    timeout: float = 60.0
    concurrency: int = 8
    retries: int = 5
    reasks: int = 2

    def sampling(self) -> dict:
        """What, besides the model and the messages, decides a reply: part of the cache key."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


@dataclass
class Accounting:
    requests: int = 0  # HTTP requests sent, retries included
    answered: int = 0  # replies received from the server
    cached: int = 0  # replies served from the cache
    retried: int = 0  # requests sent again after a 429, 5xx, time-out or dropped connection
    reasked: int = 0  # questions asked again because the reply was not parseable
    unparseable: int = 0  # questions still unparseable after every re-ask
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)


class ReplyCache:
    """A SQLite table of replies; safe across threads and processes (WAL, busy timeout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT, reply TEXT, "
                         "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)")
        self._db.commit()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, model: str, reply: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?)",
                             (key, model, reply, prompt_tokens, completion_tokens, time.time()))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()


DEFAULT_SERVER = "https://api.openai.com/v1"  # the openai client's, where neither base_url nor OPENAI_BASE_URL is set


def server(settings: ChatSettings) -> str:
    """The server a call goes to: two servers may serve a model of the same name and answer differently."""
    import os

    return (settings.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_SERVER).rstrip("/")


def check_server(settings: ChatSettings, api_key: str | None, setting: str, timeout: float = 10.0) -> list[str]:
    """Ask the server `settings` send calls to for its models (one cheap request), before any work that needs it.
    Unreachable, refusing the key, or not an OpenAI-compatible API: ValueError naming the `setting` section, the
    address and what to do. Returns the models it serves (a model not among them is the caller's to report: some
    servers answer for any model name)."""
    import openai
    from openai import OpenAI

    address = server(settings)
    client = OpenAI(api_key=api_key or "unused", base_url=settings.base_url, max_retries=0,
                    timeout=min(timeout, settings.timeout))
    try:
        return sorted(model.id for model in client.models.list())
    except openai.APIStatusError as error:
        why = f"HTTP {error.status_code}" + (" (the API key is refused: OPENAI_API_KEY in the environment or .env)"
                                            if error.status_code in (401, 403) else "")
    except openai.APIError as error:
        why = type(error).__name__
    raise ValueError(f"{setting}: the server at {address} did not list its models ({why}); start it, or correct "
                     f"{setting}.base_url (or OPENAI_BASE_URL), or set features.check_servers: false to start without "
                     f"checking")


def cache_key(settings: ChatSettings, messages: list[dict], attempt: int) -> str:
    """Everything that can change a reply: the server, the model, the messages, the sampling and the attempt."""
    blob = json.dumps({"server": server(settings), "model": settings.model, "messages": messages,
                       "sampling": settings.sampling(), "attempt": attempt}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class CachedChat:
    def __init__(self, settings: ChatSettings, cache_path: str | Path, api_key: str | None = None):
        import httpx
        from openai import OpenAI

        self.settings = settings
        self.cache = ReplyCache(cache_path)
        self.accounting = Accounting()
        self._count = threading.Lock()
        self._sent = threading.local()  # HTTP requests of the call in this thread (a call runs in one thread)

        def sent(request):
            self._sent.count = getattr(self._sent, "count", 0) + 1

        # The client retries (429 with Retry-After, 5xx, time-outs, dropped connections); its transport counts.
        self._client = OpenAI(api_key=api_key or "unused", base_url=settings.base_url, max_retries=settings.retries,
                              timeout=settings.timeout, http_client=httpx.Client(event_hooks={"request": [sent]}))

    def _add(self, **counts) -> None:
        with self._count:
            for name, value in counts.items():
                setattr(self.accounting, name, getattr(self.accounting, name) + value)

    def _request(self, call_id: str, messages: list[dict]) -> tuple[str, int, int]:
        import openai

        self._sent.count = 0
        try:
            reply = self._client.chat.completions.create(model=self.settings.model, messages=messages,
                                                         **self.settings.sampling())
        except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as error:
            status = getattr(error, "status_code", None)
            why = f"HTTP {status}" if status else type(error).__name__
            raise LLMCallError(f"call {call_id}: {why} after {self._sent.count} requests") from error
        except openai.APIStatusError as error:
            raise LLMCallError(f"call {call_id}: HTTP {error.status_code} ({type(error).__name__}); "
                               f"not retried") from error
        finally:
            self._add(requests=self._sent.count, retried=max(0, self._sent.count - 1))
        usage = reply.usage
        content = (reply.choices[0].message.content or "") if reply.choices else ""
        return content, int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)

    def ask(self, call_id: str, messages: list[dict], parse: Callable[[str], object]):
        """The parsed reply, or None when it stays unparseable after every re-ask."""
        for attempt in range(self.settings.reasks + 1):
            key = cache_key(self.settings, messages, attempt)
            reply = self.cache.get(key)
            if reply is None:
                reply, prompt_tokens, completion_tokens = self._request(call_id, messages)
                self.cache.put(key, self.settings.model, reply, prompt_tokens, completion_tokens)
                self._add(answered=1, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            else:
                self._add(cached=1)
            value = parse(reply)
            if value is not None:
                return value
            if attempt < self.settings.reasks:
                self._add(reasked=1)
        self._add(unparseable=1)
        return None

    def ask_many(self, calls: dict[str, list[dict]], parse: Callable[[str], object], progress: str = "") -> dict:
        """{call id: parsed reply or None}, `concurrency` calls at a time. On a failure the calls in flight
        finish (and are stored), no new call starts, and LLMCallError names the first failure."""
        from tqdm.auto import tqdm

        results, failures = {}, []
        same: dict[str, list[str]] = {}  # identical messages are asked once (two features with the same exemplars)
        for call_id, messages in calls.items():
            same.setdefault(json.dumps(messages, sort_keys=True), []).append(call_id)
        with ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency)) as pool:
            futures = {pool.submit(self.ask, ids[0], calls[ids[0]], parse): ids[0] for ids in same.values()}
            for future in tqdm(as_completed(futures), total=len(futures), desc=progress or "calls", mininterval=5):
                call_id = futures[future]
                if future.cancelled():
                    continue
                try:
                    results[call_id] = future.result()
                except LLMCallError as error:
                    failures.append(str(error))
                    for other in futures:
                        other.cancel()
        if failures:
            self._add(failed=len(failures))
            self.accounting.errors = failures[:5]
            raise LLMCallError(f"{len(failures)} of {len(calls)} calls failed (answers so far are kept in "
                               f"{self.cache.path}); first: {failures[0]}")
        return {call_id: results[ids[0]] for ids in same.values() for call_id in ids if ids[0] in results}

    def report(self) -> dict:
        return {"model": self.settings.model, "settings": asdict(self.settings) | {"base_url": self.settings.base_url},
                "cache": str(self.cache.path), **asdict(self.accounting)}
