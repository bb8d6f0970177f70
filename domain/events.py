"""The broker's facts: immutable, typed, versioned events — the one source of truth.

Every event shares an envelope (who, when, which request); each kind adds its own fields.
Rules (DESIGN.md §3): tags carry a version (`usage.recorded.v1`); fields are only ever added, with
defaults; money is integer micro-USD; no prompt text and no secrets, ever. The log stamps `seq`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from operator import attrgetter
from typing import Annotated, Any, Literal, Union, get_type_hints

import msgspec
import msgspec.inspect as mi
from msgspec import Meta, Struct

INT64_MAX = 2**63 - 1  # the log stores integers as int64 (Parquet, DuckDB)
NonNegative = Annotated[int, Meta(ge=0, le=INT64_MAX)]
Micros = Annotated[int, Meta(ge=0, le=INT64_MAX)]  # integer micro-USD
# Prices are micro-USD per 1M tokens (== USD per 1M tokens × 1e6), so they stay integers.
MicrosPerMTok = Annotated[int, Meta(ge=0, le=INT64_MAX)]
# Event time in µs since the Unix epoch, up to the end of year 9999 (dates must stay dates).
TimestampUs = Annotated[int, Meta(ge=0, le=253_402_300_799_999_999)]
HttpStatus = Annotated[int, Meta(ge=0, le=999)]
CONTEXT_PATTERN = r"^[A-Za-z0-9_-]{0,64}\Z"
ContextName = Annotated[str, Meta(pattern=CONTEXT_PATTERN)]
UsageSource = Literal["provider", "estimated", "missing"]


class Event(Struct, frozen=True, kw_only=True, tag_field="kind", omit_defaults=False):
    """The envelope. `event_id` is a UUIDv7 made once and reused on retry; `seq` is the log position."""

    event_id: str
    ts_us: TimestampUs
    seq: NonNegative = 0
    source: str = ""
    request_id: str = ""
    ip: str = ""
    context: ContextName = ""
    user: str | None = None


# ---- request path ---------------------------------------------------------------------------


class RequestReceived(Event, frozen=True, kw_only=True, tag="request.received.v1"):
    """A call reached an endpoint. Sizes only: never prompt text."""

    endpoint: str
    model_requested: str = ""
    stream: bool = False
    body_bytes: NonNegative = 0
    messages: NonNegative = 0
    prompt_tokens_est: NonNegative = 0
    max_tokens: NonNegative | None = None


class Candidate(Struct, frozen=True, kw_only=True):
    """One offer the router looked at, with its estimated cost and why it was (not) eligible."""

    provider: str
    model: str
    est_cost_micros: Micros | None = None
    eligible: bool = True
    reason: str = ""


class RouteDecided(Event, frozen=True, kw_only=True, tag="route.decided.v1"):
    """The router's choice, with every candidate considered and the reason."""

    strategy: str
    provider: str = ""
    model: str = ""
    reason: str = ""
    price_version: str = ""
    candidates: list[Candidate] = []  # eligible first, in the order tried; at most the first 32
    fallbacks: list[str] = []
    candidates_total: NonNegative = 0  # how many offers were considered in all


class RequestAdmitted(Event, frozen=True, kw_only=True, tag="request.admitted.v1"):
    """The reservation held against the (ip, context) limits until usage settles it."""

    provider: str = ""
    model: str = ""
    reserved_tokens: NonNegative = 0
    reserved_micros: Micros = 0


class RequestRejected(Event, frozen=True, kw_only=True, tag="request.rejected.v1"):
    """A request refused by a limit or rule: which one, the numbers, the status sent."""

    code: str
    status: HttpStatus
    message: str = ""
    limit: NonNegative | None = None
    observed: NonNegative | None = None
    retry_after_s: NonNegative | None = None


class UpstreamAttempted(Event, frozen=True, kw_only=True, tag="upstream.attempted.v1"):
    """One try at one provider. `key_id` names the key, never the key itself."""

    attempt: NonNegative
    provider: str
    model: str
    key_id: str = ""


class UpstreamFailed(Event, frozen=True, kw_only=True, tag="upstream.failed.v1"):
    """A try that failed before any byte reached the client (so a fallback may follow)."""

    attempt: NonNegative
    provider: str
    model: str
    key_id: str = ""
    status: HttpStatus | None = None
    latency_us: NonNegative = 0
    error_class: str = ""
    message: str = ""


Outcome = Literal[
    "ok", "error", "upstream_error", "upstream_cut", "client_disconnect", "budget_cut", "rejected"
]


class UsageRecorded(Event, frozen=True, kw_only=True, tag="usage.recorded.v1"):
    """What a request consumed and cost; it settles the request's reservation."""

    provider: str = ""
    model: str = ""
    prompt_tokens: NonNegative = 0
    completion_tokens: NonNegative = 0
    cached_tokens: NonNegative = 0
    reasoning_tokens: NonNegative = 0
    usage_source: UsageSource = "provider"
    input_micros_per_mtok: MicrosPerMTok | None = None
    output_micros_per_mtok: MicrosPerMTok | None = None
    cached_micros_per_mtok: MicrosPerMTok | None = None
    price_version: str = ""
    cost_micros: Micros | None = None  # None: the offer's price is unknown
    latency_us: NonNegative = 0
    ttft_us: NonNegative | None = None
    outcome: Outcome = "ok"
    status: HttpStatus = 200
    attempts: NonNegative = 1
    endpoint: str = ""


# ---- operator and system facts ---------------------------------------------------------------


class LimitsChanged(Event, frozen=True, kw_only=True, tag="limits.changed.v1"):
    """An operator changed a policy. `scope` is default|context|ip|bucket; the target is ip/context.

    Each setting is its own typed field; `None` means "not changed by this event" and a name in
    `cleared` removes an override. New limit kinds are new fields with defaults (never a new tag).
    `reset` drops every override of the scope before applying the fields.
    """

    scope: Literal["default", "context", "ip", "bucket"]
    requests_per_min: NonNegative | None = None
    tokens_per_min: NonNegative | None = None
    concurrent: NonNegative | None = None
    budget_daily_micros: Micros | None = None
    budget_monthly_micros: Micros | None = None
    allowed_providers: list[str] | None = None
    denied_providers: list[str] | None = None
    allowed_models: list[str] | None = None
    denied_models: list[str] | None = None
    pinned_model: str | None = None
    strategy: str | None = None
    cleared: list[str] = []
    reset: bool = False
    actor: str = ""
    reason: str = ""


class CatalogRefreshed(Event, frozen=True, kw_only=True, tag="catalog.refreshed.v1"):
    """The model catalog was rebuilt; `price_version` names the prices now in force."""

    price_version: str
    offers: NonNegative = 0
    providers: list[str] = []
    failed_providers: list[str] = []
    error: str = ""


class BillingMarked(Event, frozen=True, kw_only=True, tag="billing.marked.v1"):
    """A period was closed (billed) for a set of contexts; events after it go to the next bill."""

    period: str
    contexts: list[str] = []
    through_seq: NonNegative = 0
    actor: str = ""
    export_sha256: str = ""


class ConfigReloaded(Event, frozen=True, kw_only=True, tag="config.reloaded.v1"):
    """The operator's modelsconfig.yml was read again (SIGHUP); `ok` False means it was refused."""

    path: str = ""
    sha256: str = ""
    ok: bool = True
    error: str = ""


class ProviderToggled(Event, frozen=True, kw_only=True, tag="provider.toggled.v1"):
    """An operator switched a provider on or off for routing (kept across restarts)."""

    provider: str
    enabled: bool
    actor: str = ""
    reason: str = ""


AnyEvent = Union[
    RequestReceived,
    RouteDecided,
    RequestAdmitted,
    RequestRejected,
    UpstreamAttempted,
    UpstreamFailed,
    UsageRecorded,
    LimitsChanged,
    CatalogRefreshed,
    BillingMarked,
    ConfigReloaded,
    ProviderToggled,
]

EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__  # type: ignore[attr-defined]
KIND_OF: dict[type[Event], str] = {t: t.__struct_config__.tag for t in EVENT_TYPES}  # type: ignore[misc]
TYPE_OF: dict[str, type[Event]] = {tag: t for t, tag in KIND_OF.items()}

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    """One event as compact JSON (the WAL's line format)."""
    return _encoder.encode(event)


def decode(data: bytes | str) -> Event:
    """Decode and validate one event; raises `msgspec.ValidationError` naming the bad path."""
    return _decoder.decode(data)  # type: ignore[no-any-return]


_typed_decoders: dict[type[Event], msgspec.json.Decoder[Any]] = {}
_CONTEXT = re.compile(CONTEXT_PATTERN)
_contexts_ok: set[str] = set()  # contexts already checked: a host has a handful
_CONTEXT_OF = attrgetter("context")
CONTEXTS_REMEMBERED = 4096


def _checker(cls: type[Event]) -> msgspec.json.Decoder[Any]:
    """A decoder for a twin of `cls` whose `context` is a plain `str`: every other type and bound is
    checked as `cls` would, and the context's pattern once per distinct value (in `validate`). The
    pattern runs Python's `re` inside the decoder and was half the cost of checking an event."""
    hints = get_type_hints(cls, include_extras=True)
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    fields: list[tuple[str, Any, Any]] = []
    for f in info.fields:
        typ = str if hints[f.name] == ContextName else hints[f.name]
        if f.default_factory is not mi.NODEFAULT:
            fields.append((f.name, typ, msgspec.field(default_factory=f.default_factory)))
        elif f.default is not mi.NODEFAULT:
            fields.append((f.name, typ, f.default))
        else:
            fields.append((f.name, typ, msgspec.NODEFAULT))
    config = cls.__struct_config__
    # gc=False: a twin lives only inside the check, holds plain values, and is never tracked by the GC
    twin = msgspec.defstruct(f"{cls.__name__}Check", fields, kw_only=True, tag_field=config.tag_field, tag=config.tag,
                             gc=False)
    return msgspec.json.Decoder(twin)


def validate(event: Event, data: bytes) -> None:
    """Check `data` (the event's own JSON) against its type's constraints; raises ValidationError."""
    decoder = _typed_decoders.get(type(event))
    if decoder is None:
        decoder = _typed_decoders[type(event)] = _checker(type(event))
    decoder.decode(data)  # a non-str context fails here
    if event.context not in _contexts_ok:
        _check_context(event.context)


def _check_context(context: str) -> None:
    if not _CONTEXT.search(context):
        raise msgspec.ValidationError(f"Expected `str` matching regex {CONTEXT_PATTERN!r} - at `$.context`")
    if len(_contexts_ok) >= CONTEXTS_REMEMBERED:
        _contexts_ok.clear()
    _contexts_ok.add(context)


def encode_lines(events: Sequence[Event]) -> bytes:
    """Events as WAL lines (compact JSON, each ending in a newline), in one call."""
    return _encoder.encode_lines(events)


@cache
def _lines_checker() -> msgspec.json.Decoder[Any]:
    twins = tuple(_typed_decoders.setdefault(t, _checker(t)).type for t in EVENT_TYPES)
    return msgspec.json.Decoder(Union[twins])  # type: ignore[valid-type]


def validate_lines(events: Sequence[Event], data: bytes) -> None:
    """`validate` for a batch: `data` is `encode_lines(events)`, checked in one decoder call (a
    Python call per event was a third of the check). On a refusal each event is checked alone, so
    the error names the event's own path (`$.cost_micros`, not `$[2].cost_micros`)."""
    try:
        _lines_checker().decode_lines(data)
    except msgspec.ValidationError:
        for event in events:
            validate(event, encode(event))
        # each passed alone: a kind outside the union (a subclass made elsewhere) — accepted, as alone
    if not _contexts_ok.issuperset(map(_CONTEXT_OF, events)):  # (read and checked in C: the usual case)
        for event in events:
            if event.context not in _contexts_ok:
                _check_context(event.context)


def kind_of(event: Event) -> str:
    return KIND_OF[type(event)]
