"""One proxied call, start to end: parse, route, admit, append, call (with fallback), settle, answer.

Events per request: `request.received`, `route.decided`, `request.admitted` (durable before any
upstream call, in one group commit with the first `upstream.attempted`), one `upstream.attempted` per
try and `upstream.failed` per failed try, and exactly one `usage.recorded` on every path — success,
upstream error, stream cut, client gone.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from domain.catalog import Offer
from domain.cost import cost_micros
from domain.events import (
    Event, RequestAdmitted, RequestReceived, RequestRejected, RouteDecided,
    UpstreamAttempted, UpstreamFailed, UsageRecorded,
)
from domain.routing import NoRoute, RouteDecision, event_candidates
from eventlog.ids import now_us, uuid7
from functions.errors import BrokerError, sse_error
from functions.providers import Provider
from functions.request_body import ParsedRequest, upstream_body
from functions.state import RECORDED_CANDIDATES, BrokerState
from functions.upstream import UpstreamConnectError, UpstreamResponse, UpstreamTimeout
from functions.usage_capture import SseScanner, Usage, estimate_completion_tokens, text_chars, usage_of_body

RETRYABLE = frozenset({401, 403, 408, 409, 429})  # plus every 5xx


class Caller(msgspec.Struct):
    """Who is asking. (The request's records are msgspec Structs: their `__init__` runs in C.)"""

    ip: str
    context: str
    user: str | None
    request_id: str


class Answer(msgspec.Struct):
    status: int
    headers: list[tuple[bytes, bytes]]  # ASGI pairs: what the provider's answer adds
    body: bytes = b""
    stream: Relay | None = None


class Call(msgspec.Struct):
    """Everything one request accumulates on its way through."""

    state: BrokerState
    caller: Caller
    endpoint: str
    path: str
    parsed: ParsedRequest
    body_bytes: int = 0
    cost_cap_micros: int | None = None  # a stream without max_tokens is cut when it would cost more
    budget_code: str = ""  # which budget that cap comes from
    t0: float = msgspec.field(default_factory=time.monotonic)
    attempts: int = 0
    failures: list[str] = msgspec.field(default_factory=list)

    def event(self, cls: type[Event], **fields: Any) -> Any:
        """An event of this call (the rarer kinds). The five every request logs are built with their
        fields spelled out: keyword arguments passed through `**` make two dicts and a merge per event,
        more than the constructor call itself."""
        c = self.caller
        ts = now_us()
        return cls(event_id=uuid7(ts), ts_us=ts, source=self.state.config.source, request_id=c.request_id,
                   ip=c.ip, context=c.context, user=c.user, **fields)

    def event_rejected(self, error: BrokerError) -> RequestRejected:
        """A refusal before parsing succeeded: only what the envelope knows."""
        return self.event(RequestRejected, code=error.code, status=error.status, message=error.message[:500])

    def elapsed_us(self) -> int:
        return int((time.monotonic() - self.t0) * 1e6)


def received(call: Call) -> RequestReceived:
    p, c, ts = call.parsed, call.caller, now_us()
    return RequestReceived(event_id=uuid7(ts), ts_us=ts, source=call.state.config.source, request_id=c.request_id,
                           ip=c.ip, context=c.context, user=c.user,
                           endpoint=call.endpoint, model_requested=p.route.model or "auto",
                           stream=p.stream, body_bytes=call.body_bytes, messages=p.messages,
                           prompt_tokens_est=p.route.prompt_tokens_est, max_tokens=p.route.max_tokens)


def decided(call: Call, decision: RouteDecision | NoRoute, strategy: str, price_version: str) -> RouteDecided:
    if isinstance(decision, NoRoute):
        return call.event(RouteDecided, strategy=strategy, reason=decision.message, price_version=price_version,
                          candidates=event_candidates(decision.candidates[:RECORDED_CANDIDATES]),
                          candidates_total=len(decision.candidates))
    c, ts = call.caller, now_us()
    return RouteDecided(event_id=uuid7(ts), ts_us=ts, source=call.state.config.source, request_id=c.request_id,
                        ip=c.ip, context=c.context, user=c.user,
                        strategy=decision.strategy, provider=decision.chosen.provider,
                        model=decision.chosen.model, reason=decision.reason, price_version=price_version,
                        candidates=event_candidates(decision.candidates[:RECORDED_CANDIDATES]),
                        candidates_total=decision.considered,
                        fallbacks=[o.key for o in decision.ordered[1:RECORDED_CANDIDATES]])


async def reject(call: Call, error: BrokerError, first: list[Event]) -> None:
    """Log a refusal (with whatever was learned first), then let the error answer the client."""
    await call.state.log.append([*first, call.event_rejected(error)])
    raise error


def usage_event(call: Call, offer: Offer | None, usage: Usage | None, chars: int, outcome: str,
                status: int, ttft_us: int | None, price_version: str) -> UsageRecorded:
    """The settlement. Without provider usage the tokens are estimated (prompt estimate, text/4)."""
    c, ts = call.caller, now_us()
    if offer is None:  # no offer answered: nothing was served, nothing is owed
        return UsageRecorded(
            event_id=uuid7(ts), ts_us=ts, source=call.state.config.source, request_id=c.request_id, ip=c.ip,
            context=c.context, user=c.user, usage_source="missing", price_version=price_version, cost_micros=0,
            latency_us=call.elapsed_us(), ttft_us=ttft_us, outcome=outcome, status=status, attempts=call.attempts,
            endpoint=call.endpoint)
    if usage is not None:
        source, prompt, completion = "provider", usage.prompt_tokens or 0, usage.completion_tokens or 0
        cached, reasoning = usage.cached, usage.reasoning
    elif chars or outcome in ("ok", "upstream_cut", "client_disconnect", "budget_cut"):
        source, prompt, completion = "estimated", call.parsed.route.prompt_tokens_est, estimate_completion_tokens(chars)
        cached = reasoning = 0
    else:
        source, prompt, completion, cached, reasoning = "missing", 0, 0, 0, 0
    prices = offer.prices
    cost = 0 if source == "missing" else cost_micros(prompt, completion, cached, prices)
    return UsageRecorded(
        event_id=uuid7(ts), ts_us=ts, source=call.state.config.source, request_id=c.request_id, ip=c.ip,
        context=c.context, user=c.user, provider=offer.provider, model=offer.model,
        prompt_tokens=prompt, completion_tokens=completion, cached_tokens=min(cached, prompt),
        reasoning_tokens=reasoning, usage_source=source, input_micros_per_mtok=prices.input,
        output_micros_per_mtok=prices.output, cached_micros_per_mtok=prices.cached,
        price_version=price_version, cost_micros=cost, latency_us=call.elapsed_us(), ttft_us=ttft_us,
        outcome=outcome, status=status, attempts=call.attempts, endpoint=call.endpoint,
    )


def _retry_after_s(resp: UpstreamResponse) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


async def attempt_all(call: Call, decision: RouteDecision, price_version: str,
                      settle: Callable[[UsageRecorded], None],
                      admission: Callable[[list[Event]], Awaitable[None]], prelude: list[Event]) -> Answer:
    """Try offers in fallback order until one answers; failures before any byte fall through.

    `prelude` (received, decided, admitted) is made durable by `admission` together with the first
    `upstream.attempted`, in one group commit, before that attempt starts; later attempts ride along.
    """
    state = call.state
    for offer in decision.ordered[: state.config.max_attempts]:
        provider = state.providers.get(offer.provider)
        now_s = time.monotonic()
        picked = provider.keys.acquire(now_s) if provider is not None and provider.usable(now_s) else None
        if provider is None or picked is None:
            call.failures.append(f"{offer.key}: no usable key")
            continue
        call.attempts += 1
        index, key = picked
        key_id = provider.keys.key_id(index)
        c, ts = call.caller, now_us()
        attempted = UpstreamAttempted(event_id=uuid7(ts), ts_us=ts, source=state.config.source,
                                      request_id=c.request_id, ip=c.ip, context=c.context, user=c.user,
                                      attempt=call.attempts, provider=offer.provider, model=offer.model, key_id=key_id)
        if prelude:
            try:
                await admission([*prelude, attempted])
            except BaseException:
                provider.keys.release(index)
                raise
            prelude = []
        else:
            state.submit([attempted])
        answer = await _try(call, provider, offer, index, key, key_id, price_version, settle)
        if answer is not None:
            return answer
    if prelude:
        await admission(prelude)
    code = "upstream_timeout" if call.failures and call.failures[-1].endswith("timeout") else "upstream_error"
    status = 504 if code == "upstream_timeout" else 502
    settle(usage_event(call, None, None, 0, "upstream_error", status, None, price_version))
    tried = "; ".join(call.failures) or "no offer could be tried"
    raise BrokerError(code, f"every upstream attempt failed ({tried})")


def _back_in_service(state: BrokerState, offer: Offer) -> None:
    """An answer from `offer` clears its back-off (its key is only made when some offer has failed)."""
    if state.backoff.failures:
        state.backoff.succeeded(offer.key)


async def _try(call: Call, provider: Provider, offer: Offer, index: int, key: str, key_id: str,
               price_version: str, settle: Callable[[UsageRecorded], None]) -> Answer | None:
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = upstream_body(call.parsed, offer.model)

    def failed(status: int | None, error: str, retry_after: float | None = None) -> None:
        now_s = time.monotonic()
        provider.keys.report(index, status, now_s, retry_after)
        if status is None or status >= 500:
            call.state.backoff.failed(offer.key, now_s)
        call.state.health_changed()
        provider.keys.release(index)
        call.failures.append(f"{offer.key}: {error}")
        call.state.submit([call.event(
            UpstreamFailed, attempt=call.attempts, provider=offer.provider, model=offer.model, key_id=key_id,
            status=status, latency_us=int((time.monotonic() - started) * 1e6),
            error_class=error.split(" ")[0], message=error[:300])])

    try:
        resp = await provider.client.post(provider.url(call.path), body, headers)
    except UpstreamTimeout:
        failed(None, "timeout")
        return None
    except UpstreamConnectError as exc:
        failed(None, f"connect_error {exc}")
        return None
    if resp.status >= 500 or resp.status in RETRYABLE:
        resp.close()
        failed(resp.status, f"http_{resp.status}", _retry_after_s(resp))
        return None
    ctype = resp.headers.get("content-type")
    out_headers = [(b"content-type", ctype.encode("latin-1", "replace") if ctype else b"application/json"),
                   *call.state.route_headers(offer)]
    if call.parsed.stream and resp.status == 200:
        return await _start_stream(call, provider, offer, index, resp, out_headers, price_version, settle, failed)
    try:
        data = await resp.read()
    except (UpstreamTimeout, UpstreamConnectError) as exc:
        failed(None, "timeout" if isinstance(exc, UpstreamTimeout) else f"connect_error {exc}")
        return None
    provider.keys.release(index)
    _back_in_service(call.state, offer)
    ok = resp.status < 400
    usage = usage_of_body(data) if ok else None
    chars = text_chars(data) if ok and usage is None else 0
    settle(usage_event(call, offer, usage, chars, "ok" if ok else "error", resp.status,
                       call.elapsed_us(), price_version))
    return Answer(resp.status, out_headers, data)


async def _start_stream(call: Call, provider: Provider, offer: Offer, index: int, resp: UpstreamResponse,
                        headers: list[tuple[bytes, bytes]], price_version: str, settle: Callable[[UsageRecorded], None],
                        failed: Callable[..., None]) -> Answer | None:
    """Wait for the first upstream chunk before answering, so a dead stream can still fall back."""
    chunks = resp.chunks().__aiter__()
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        first = b""
    except (UpstreamTimeout, UpstreamConnectError) as exc:
        resp.close()
        failed(None, "timeout" if isinstance(exc, UpstreamTimeout) else f"connect_error {exc}")
        return None
    _back_in_service(call.state, offer)
    headers.append((b"cache-control", b"no-cache"))
    relay = Relay(call, provider, offer, index, resp, first, chunks, call.elapsed_us(), price_version, settle)
    return Answer(200, headers, stream=relay)


class Relay:
    """Forwards an upstream SSE stream; `close()` settles usage exactly once, however it ends."""

    __slots__ = ("call", "provider", "offer", "index", "resp", "chunks", "_chunks_ready", "first", "ttft_us",
                 "price_version", "settle", "cap", "scanner", "outcome", "closed", "settled", "finished", "ended")

    def __init__(self, call: Call, provider: Provider, offer: Offer, index: int, resp: UpstreamResponse,
                 first: bytes, chunks: AsyncIterator[bytes], ttft_us: int, price_version: str,
                 settle: Callable[[UsageRecorded], None]) -> None:
        self.call, self.provider, self.offer, self.index = call, provider, offer, index
        self.resp, self.chunks = resp, chunks
        self._chunks_ready: Callable[[], bool] | None = getattr(chunks, "ready", None)
        self.first: bytes | None = first  # read before answering (fallback was still possible)
        self.ttft_us, self.price_version, self.settle = ttft_us, price_version, settle
        self.cap = call.cost_cap_micros  # None: no budget cap on this stream
        self.scanner = SseScanner(strip_usage_chunk=not call.parsed.wants_usage,
                                  eager_chars=self.cap is not None)  # a cap reads chars per chunk
        self.outcome = "client_disconnect"
        self.closed = self.settled = self.finished = False
        self.ended = False  # the chunk just yielded is the stream's last: the server may end the response with it

    def ready(self) -> bool:
        """Whether the next chunk is had without waiting on the upstream (`send_stream` watches for
        the client's disconnect only while the relay waits)."""
        if self.first is not None or self.ended or self.finished:
            return True
        ready = self._chunks_ready
        return ready is not None and ready()

    def _over_budget(self) -> bool:
        est = self.call.parsed.route.prompt_tokens_est
        cost = cost_micros(est, estimate_completion_tokens(self.scanner.chars), 0, self.offer.prices)
        return cost is not None and cost > self.cap  # type: ignore[operator]

    def _feed_capped(self, chunk: bytes) -> bytes | None:
        """`scanner.feed` under a cost cap: None when forwarding `chunk` would cross it (checked
        before the chunk goes out); usage then settles what the client received."""
        scanner = self.scanner
        delivered = scanner.chars
        out = scanner.feed(chunk)
        if not scanner.done and self._over_budget():
            scanner.chars = delivered  # bill what the client received
            self.outcome = "budget_cut"
            self.settle_once()
            return None
        return out

    def _done(self, out: bytes) -> bytes:
        """`[DONE]` has passed: settle; if the upstream body is at its end, these are the last bytes."""
        self.outcome = "ok"
        self.settle_once()
        if not self.ended and self.resp.at_eof():
            out += self.scanner.finish()
            self.ended = True
        return out

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        """The next bytes for the client. Usage settles before the client can see the end, so its
        next request meets the new spend. A class, not an async generator: a generator registers
        with the loop's async-generator hooks, once per stream. Once `[DONE]` has passed and the
        upstream body is at its end, the last bytes come with `ended` set, so the response can end
        in the same write; the next call then finds the upstream at its end and stops."""
        scanner = self.scanner
        while not self.finished:
            if self.ended:  # the upstream body is at its end: nothing more to read or wait for
                self.finished = True
                break
            chunk = self.first
            if chunk is not None:
                self.first = None
            else:
                try:
                    chunk = await self.chunks.__anext__()
                except StopAsyncIteration:
                    self.finished = True
                    rest = scanner.finish()
                    if scanner.done:
                        if rest:
                            return rest
                        break
                    return rest + self._broke_off()
                except (UpstreamTimeout, UpstreamConnectError):
                    self.finished = True
                    return self._broke_off()
            out = scanner.feed(chunk) if self.cap is None else self._feed_capped(chunk)
            if out is None:
                self.finished = True
                code = self.call.budget_code or "budget_daily"
                return sse_error(code, f"the stream was cut: it reached this (ip, context)'s {code[7:]} budget")
            if scanner.done:
                out = self._done(out)
            if out or self.ended:
                return out
        raise StopAsyncIteration

    def _broke_off(self) -> bytes:
        self.outcome = "upstream_cut"
        self.settle_once()
        return sse_error("upstream_error", "the upstream stream broke off before it finished")

    def settle_once(self) -> None:
        if not self.settled:
            self.settled = True
            self.settle(usage_event(self.call, self.offer, self.scanner.usage, self.scanner.chars, self.outcome,
                                    200, self.ttft_us, self.price_version))

    def close(self) -> None:
        """Settle usage (what was streamed so far) if not yet, release upstream and key. Idempotent."""
        self.settle_once()
        if not self.closed:
            self.closed = True
            self.resp.close()
            self.provider.keys.release(self.index)


async def serve(call: Call, settle: Callable[[UsageRecorded], None]) -> Answer:
    """Route, log the decision and reservation durably, then call upstream."""
    state = call.state
    catalog = state.catalog.catalog
    key = (call.caller.ip, call.caller.context)
    decision, strategy = state.route(call.parsed.route, key)
    first: list[Event] = [received(call), decided(call, decision, strategy, catalog.price_version)]
    if isinstance(decision, NoRoute):
        code = "model_not_found" if decision.cause == "unknown_model" else "no_route"
        await reject(call, BrokerError(code, decision.message, param="model"), first)
    assert isinstance(decision, RouteDecision)
    route = call.parsed.route
    reserved_tokens = route.prompt_tokens_est + (route.max_tokens or state.config.expected_output_tokens)
    worst = cost_micros(route.prompt_tokens_est, route.max_tokens or state.config.expected_output_tokens, 0,
                        decision.chosen.prices)
    c, ts = call.caller, now_us()
    admitted = RequestAdmitted(event_id=uuid7(ts), ts_us=ts, source=state.config.source, request_id=c.request_id,
                               ip=c.ip, context=c.context, user=c.user,
                               provider=decision.chosen.provider, model=decision.chosen.model,
                               reserved_tokens=reserved_tokens, reserved_micros=worst or 0)
    refusal = state.admission.admit(admitted)  # check + reserve, synchronously
    if refusal is not None:
        headers = {"retry-after": str(refusal.retry_after_s), **state.admission.headers(key, admitted.ts_us)}
        rejected = call.event(RequestRejected, code=refusal.code, status=429, message=refusal.message,
                              limit=refusal.limit, observed=refusal.observed, retry_after_s=refusal.retry_after_s)
        await state.log.append([*first, rejected])
        raise BrokerError(refusal.code, refusal.message, headers=headers)
    if call.parsed.stream and route.max_tokens is None:
        left = state.admission.usage.budget_left(key, state.admission.limits(key), admitted.ts_us)
        if left is not None:
            call.cost_cap_micros, call.budget_code = admitted.reserved_micros + max(left[0], 0), left[1]

    async def admission(events: list[Event]) -> None:
        try:
            await state.log.append(events)
        except BaseException:
            state.admission.usage.cancel(key, admitted.request_id)  # the projection must match the log
            raise

    return await attempt_all(call, decision, catalog.price_version, settle, admission, [*first, admitted])


