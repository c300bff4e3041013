"""The soak's mixed traffic (`loadtest.soak`): paced client threads, each one kind of user, recording
every request's outcome and every vector it got back (checked after the run against references).

Kinds: ``hit`` (/v1/embed, known texts with their item ids), ``miss`` (/v1/embed, new texts),
``openai`` (/v1/embeddings through the openai SDK, known and new texts), ``lookup``
(/v1/items/lookup of the ids), each with every wire encoding and nested ``dimensions`` in turn; ``slow``
(a body sent in pieces over seconds on a raw socket) and ``disconnect`` (a request whose client hangs
up before the answer: never an error, it is what the kind does)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

ENCODINGS = ("float", "base64", "float16", "int8", "binary")
# None: the SDK's default (it asks for base64 and decodes it itself); "base64" asked for explicitly comes
# back as the base64 string.
OPENAI_ENCODINGS = ("float", None, "base64")
HOT_ITEMS = 64
ADJECTIVES = ("red", "oak", "linen", "steel", "wool", "glass", "green", "soft")
NOUNS = ("table", "lamp", "sofa", "jacket", "kettle", "rug", "shelf", "boots")


def hot_text(index: int) -> str:
    return f"soak item {index}: {ADJECTIVES[index % 8]} {NOUNS[index // 8 % 8]} no {index}"


def hot_id(index: int) -> str:
    return f"soak-{index}"


@dataclass
class Outcome:
    at: float  # seconds since the soak started, when the request was sent
    route: str
    kind: str
    seconds: float
    status: int | None  # None: no answer (transport error)
    error: str = ""  # "<status> <error type>" or the transport error's name


@dataclass(frozen=True)
class IdsSeen:
    """Ids a request was answered about: those a hit stored, or those a lookup found unknown."""

    sent: float  # seconds since the soak started
    finished: float
    fingerprint: str  # the model that answered (id keys live in its namespace)
    ids: tuple[str, ...]


@dataclass
class Returned:
    """One vector as the client got it, decoded to float32, for the check against the reference."""

    fingerprint: str | None  # None: /v1/embeddings does not say (either served model's is accepted)
    text: str
    encoding: str
    dims: int
    vector: np.ndarray
    scale: float | None = None


@dataclass
class Plan:
    """What the clients send: rates are requests per second per kind."""

    model: str
    dims: tuple[int, ...]  # the nested sizes /v1/models lists (the full k last)
    rates: dict[str, float] = field(
        default_factory=lambda: {
            "hit": 12.0,
            "miss": 2.0,
            "openai": 2.0,
            "lookup": 4.0,
            "slow": 0.25,
            "disconnect": 0.2,
        }
    )


def decode(embedding: Any, encoding: str, dims: int, scale: float | None) -> np.ndarray:
    """The float32 vector an answer's ``embedding`` decodes to (docs/api.md, "Wire encodings")."""
    if encoding == "float":
        return np.asarray(embedding, np.float32)
    raw = base64.b64decode(embedding)
    if encoding == "base64":
        return np.frombuffer(raw, "<f4").copy()
    if encoding == "float16":
        return np.frombuffer(raw, "<f2").astype(np.float32)
    if encoding == "int8":
        return np.frombuffer(raw, np.int8).astype(np.float32) * np.float32(scale)
    bits = np.unpackbits(np.frombuffer(raw, np.uint8), count=dims)
    return np.where(bits == 1, 1.0, -1.0).astype(np.float32)


class Traffic:
    """One paced thread per kind, from ``start()`` to ``stop()``; ``outcomes`` and ``returned`` fill up."""

    def __init__(self, url: str, plan: Plan, started: float) -> None:
        self.url, self.plan, self.started = url, plan, started
        self.outcomes: list[Outcome] = []
        self.returned: list[Returned] = []
        self.stored_ids: list[IdsSeen] = []  # per hit answered
        self.unknown_ids: list[IdsSeen] = []  # per lookup answered without some of its ids
        self.new_texts: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        kinds: dict[str, Callable[[int], None]] = {
            "hit": self._hit,
            "miss": self._miss,
            "openai": self._openai,
            "lookup": self._lookup,
            "slow": self._slow,
            "disconnect": self._disconnect,
        }
        self._threads = [
            threading.Thread(target=self._paced, args=(kind, send), name=f"soak-{kind}", daemon=True)
            for kind, send in kinds.items()
            if plan.rates.get(kind, 0) > 0
        ]
        self._http = httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=16))

    def start(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        self._http.close()

    def now(self) -> float:
        return time.monotonic() - self.started

    # --- pacing and recording -----------------------------------------------------------------------

    def _paced(self, kind: str, send: Callable[[int], None]) -> None:
        interval = 1 / self.plan.rates[kind]
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            send(n)
            n += 1
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _record(self, outcome: Outcome, returned: Sequence[Returned] = ()) -> None:
        with self._lock:
            self.outcomes.append(outcome)
            self.returned.extend(returned)

    def _post(self, route: str, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        sent = self.now()
        try:
            answer = self._http.post(route, json=body)
        except httpx.TransportError as exc:
            self._record(Outcome(sent, route, kind, self.now() - sent, None, type(exc).__name__))
            return None
        error = "" if answer.status_code == 200 else f"{answer.status_code} {_error_type(answer.content)}"
        self._record(Outcome(sent, route, kind, self.now() - sent, answer.status_code, error))
        return answer.json() if answer.status_code == 200 else None

    def _shape(self, n: int) -> tuple[str, int | None, int]:
        """The n-th request's encoding and ``dimensions`` (None = the full k), every pair in turn."""
        encoding = ENCODINGS[n % len(ENCODINGS)]
        dims = self.plan.dims[(n // len(ENCODINGS)) % len(self.plan.dims)]
        return encoding, (None if dims == self.plan.dims[-1] else dims), dims

    def _keep(self, answer: dict[str, Any], texts: list[str], encoding: str, dims: int) -> None:
        kept = [
            Returned(
                answer["fingerprint"],
                text,
                encoding,
                dims,
                decode(item["embedding"], encoding, dims, item.get("scale")),
                item.get("scale"),
            )
            for text, item in zip(texts, answer["data"], strict=True)
        ]
        with self._lock:
            self.returned.extend(kept)

    # --- the kinds ----------------------------------------------------------------------------------

    def _hit(self, n: int) -> None:
        encoding, dimensions, dims = self._shape(n)
        indices = [(n * 7 + k) % HOT_ITEMS for k in range(1 + n % 4)]
        items = [{"id": hot_id(i), "text": hot_text(i)} for i in indices]
        sent = self.now()
        answer = self._post("/v1/embed", "hit", _body(items=items, encoding=encoding, dimensions=dimensions))
        if answer is not None:
            self._keep(answer, [hot_text(i) for i in indices], encoding, dims)
            stored = IdsSeen(sent, self.now(), answer["fingerprint"], tuple(item["id"] for item in items))
            with self._lock:
                self.stored_ids.append(stored)

    def _new(self, kind: str, n: int, count: int) -> list[str]:
        texts = [f"soak {kind} text {n}-{k}: {ADJECTIVES[(n + k) % 8]} {NOUNS[n % 8]}" for k in range(count)]
        with self._lock:
            self.new_texts.update(texts)
        return texts

    def _miss(self, n: int) -> None:
        encoding, dimensions, dims = self._shape(n)
        texts = self._new("miss", n, 1 + n % 3)
        items = [{"text": t} for t in texts]
        answer = self._post("/v1/embed", "miss", _body(items=items, encoding=encoding, dimensions=dimensions))
        if answer is not None:
            self._keep(answer, texts, encoding, dims)

    def _lookup(self, n: int) -> None:
        encoding, dimensions, dims = self._shape(n)
        indices = [(n * 5 + k) % HOT_ITEMS for k in range(1 + n % 4)]
        body = _body(ids=[hot_id(i) for i in indices], encoding=encoding, dimensions=dimensions)
        sent = self.now()
        answer = self._post("/v1/items/lookup", "lookup", body)
        if answer is not None:
            text_of = {hot_id(i): hot_text(i) for i in indices}
            self._keep(answer, [text_of[item["id"]] for item in answer["data"]], encoding, dims)
            unknown = tuple(answer["unknown"])
            if unknown:  # judged by `soak_report.ids_criterion`
                with self._lock:
                    self.unknown_ids.append(IdsSeen(sent, self.now(), answer["fingerprint"], unknown))

    def _openai(self, n: int) -> None:
        import openai

        encoding = OPENAI_ENCODINGS[n % len(OPENAI_ENCODINGS)]
        dims = self.plan.dims[(n // len(OPENAI_ENCODINGS)) % len(self.plan.dims)]
        texts = [hot_text((n * 3) % HOT_ITEMS), *self._new("openai", n, n % 2)]
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=30)
        sent = self.now()
        try:
            kwargs: dict[str, Any] = {"dimensions": dims} if dims != self.plan.dims[-1] else {}
            if encoding is not None:
                kwargs["encoding_format"] = encoding
            answer = client.embeddings.create(model=self.plan.model, input=texts, **kwargs)
        except openai.APIStatusError as exc:
            body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else {}
            error = f"{exc.status_code} {body.get('type', '?') if isinstance(body, dict) else '?'}"
            self._record(Outcome(sent, "/v1/embeddings", "openai", self.now() - sent, exc.status_code, error))
            return
        except openai.APIConnectionError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ else type(exc).__name__
            self._record(Outcome(sent, "/v1/embeddings", "openai", self.now() - sent, None, cause))
            return
        finally:
            client.close()
        returned = [
            Returned(
                None, text, encoding or "float", dims, decode(item.embedding, encoding or "float", dims, None)
            )
            for text, item in zip(texts, answer.data, strict=True)
        ]
        self._record(Outcome(sent, "/v1/embeddings", "openai", self.now() - sent, 200), returned)

    def _raw(self, body: bytes, *, pieces: int, pause: float, read: bool) -> tuple[int | None, str]:
        """POST /v1/embed on a raw socket, the body in ``pieces`` ``pause`` s apart; with ``read`` the
        status and error type of the answer, else it hangs up right after sending."""
        host, port = self.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/embed HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            step = -(-len(body) // pieces)
            for start in range(0, len(body), step):
                sock.sendall(body[start : start + step])
                if start + step < len(body):
                    time.sleep(pause)
            if not read:
                return None, "hung up by design"
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, payload = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, "" if status == 200 else f"{status} {_error_type(payload)}"

    def _slow(self, n: int) -> None:
        texts = self._new("slow", n, 2)
        body = json.dumps({"items": [{"text": t} for t in texts]}).encode()
        sent = self.now()
        try:
            status, error = self._raw(body, pieces=4, pause=0.7, read=True)
        except OSError as exc:
            status, error = None, type(exc).__name__
        self._record(Outcome(sent, "/v1/embed", "slow", self.now() - sent, status, error))

    def _disconnect(self, n: int) -> None:
        texts = self._new("disconnect", n, 4)
        body = json.dumps({"items": [{"text": t} for t in texts]}).encode()
        sent = self.now()
        try:
            self._raw(body, pieces=1, pause=0, read=False)
            error = "hung up by design"
        except OSError as exc:
            error = type(exc).__name__
        self._record(Outcome(sent, "/v1/embed", "disconnect", self.now() - sent, None, error))


def _body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _error_type(payload: bytes) -> str:
    try:
        return str(json.loads(payload)["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "?"
