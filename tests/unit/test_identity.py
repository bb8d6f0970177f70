"""Who is asking: the context rules and the client ip behind (or not behind) trusted proxies."""

from __future__ import annotations

import pytest

from domain.identity import IdentityError, client_ip, context_of, parse_networks, user_of

TRUSTED = parse_networks(["127.0.0.1/32", "::1/128", "10.0.0.0/8"])


# ---- context --------------------------------------------------------------------------------------


def test_a_missing_context_is_the_default() -> None:
    assert context_of(None, "0") == "0"
    assert context_of(None, "shared") == "shared"


@pytest.mark.parametrize("value", ["0", "42", "team-a", "Team_B", "x" * 64, "-", "_"])
def test_a_well_formed_context_is_kept(value: str) -> None:
    assert context_of(value, "0") == value


@pytest.mark.parametrize("value", ["", " ", "a b", "x" * 65, "ctx.1", "../etc", "é", "a\nb", "a/b", "1,2"])
def test_a_malformed_context_is_an_error_naming_the_header_and_the_rule(value: str) -> None:
    result = context_of(value, "0")
    assert isinstance(result, IdentityError)
    assert result.code == "invalid_context"
    assert "X-Hero-Context" in result.message
    assert "[A-Za-z0-9_-]{1,64}" in result.message


def test_a_long_bad_context_is_shortened_in_the_message() -> None:
    result = context_of("!" * 10_000, "0")
    assert isinstance(result, IdentityError)
    assert len(result.message) < 200 and "…" in result.message


def test_the_allow_list_refuses_unknown_contexts_but_not_the_default() -> None:
    allowed = frozenset({"a", "b"})
    assert context_of("a", "0", allowed) == "a"
    unknown = context_of("c", "0", allowed)
    assert isinstance(unknown, IdentityError)
    assert unknown.code == "unknown_context" and "'c'" in unknown.message
    assert context_of(None, "0", allowed) == "0"


@pytest.mark.parametrize(("value", "kept"), [
    ("alice", "alice"), ("Alice Smith <a@b.c>", "Alice Smith <a@b.c>"), (None, None), ("a\x00b", None),
    ("tab\there", None), ("u" * 128, "u" * 128), ("u" * 129, None),
])
def test_the_user_is_kept_only_when_printable_and_short(value: str | None, kept: str | None) -> None:
    assert user_of(value) == kept


# ---- client ip ------------------------------------------------------------------------------------


def ip(peer: str | None, xff: str | None = None, real: str | None = None, **kw: object) -> str:
    return client_ip(peer, xff, real, trusted=TRUSTED, **kw)  # type: ignore[arg-type]


def test_an_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert ip("203.0.113.5", xff="198.51.100.1", real="198.51.100.2") == "203.0.113.5"


def test_a_trusted_peer_forwards_the_right_most_untrusted_hop() -> None:
    assert ip("127.0.0.1", xff="198.51.100.1") == "198.51.100.1"
    # the client may prepend anything; the right-most hop not one of ours is the real client
    assert ip("127.0.0.1", xff="6.6.6.6, 198.51.100.1, 10.1.2.3") == "198.51.100.1"
    assert ip("10.9.9.9", xff=" 6.6.6.6 ,198.51.100.7 ") == "198.51.100.7"


def test_x_real_ip_is_the_fallback_when_forwarded_for_has_no_untrusted_hop() -> None:
    assert ip("127.0.0.1", real="198.51.100.9") == "198.51.100.9"
    assert ip("127.0.0.1", xff="10.0.0.1, 127.0.0.1", real="198.51.100.9") == "198.51.100.9"
    assert ip("127.0.0.1", xff="", real="198.51.100.9") == "198.51.100.9"


def test_a_trusted_peer_without_forwarding_headers_is_itself() -> None:
    assert ip("127.0.0.1") == "127.0.0.1"
    assert ip("127.0.0.1", real="not an ip") == "127.0.0.1"


def test_a_unix_socket_peer_counts_as_the_local_proxy() -> None:
    assert ip(None, xff="198.51.100.3", via_unix_socket=True) == "198.51.100.3"
    assert ip(None, real="198.51.100.4", via_unix_socket=True) == "198.51.100.4"
    assert ip(None, via_unix_socket=True) == "unix"
    assert client_ip(None, "198.51.100.3", None, trusted=(), via_unix_socket=True) == "198.51.100.3"


def test_no_peer_and_no_socket_is_unknown() -> None:
    assert ip(None, xff="198.51.100.3") == "unknown"


@pytest.mark.parametrize(("raw", "normal"), [
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:db8::ff00:42:8329"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"),
    ("203.0.113.7:5678", "203.0.113.7"),
])
def test_addresses_are_normalised(raw: str, normal: str) -> None:
    assert ip(raw) == normal
    assert ip("127.0.0.1", xff=raw) == normal


def test_ipv4_mapped_ipv6_is_the_ipv4_address() -> None:
    assert ip("::ffff:203.0.113.7") == "203.0.113.7"
    assert ip("127.0.0.1", xff="::ffff:198.51.100.1") == "198.51.100.1"
    # a mapped loopback peer is the trusted proxy it maps to
    assert ip("::ffff:127.0.0.1", xff="198.51.100.2") == "198.51.100.2"


def test_ipv6_is_bucketed_by_prefix_and_ipv4_is_not() -> None:
    assert ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd", v6_prefix=64) == "2001:db8:1:2::/64"
    assert ip("2001:db8:1:2::1", v6_prefix=64) == ip("2001:db8:1:2:ffff::9", v6_prefix=64)
    assert ip("2001:db8:1:3::1", v6_prefix=64) != ip("2001:db8:1:2::1", v6_prefix=64)
    assert ip("2001:db8:1:2::1", v6_prefix=48) == "2001:db8:1::/48"
    assert ip("203.0.113.7", v6_prefix=64) == "203.0.113.7"
    assert ip("2001:db8::1") == "2001:db8::1"


def test_ipv6_proxies_are_trusted_by_their_network() -> None:
    nets = parse_networks(["fd00::/8"])
    assert client_ip("fd12::1", "2001:db8::5", None, trusted=nets) == "2001:db8::5"
    assert client_ip("2001:db8::9", "2001:db8::5", None, trusted=nets) == "2001:db8::9"


def test_parse_networks_skips_blanks_and_accepts_host_bits() -> None:
    nets = parse_networks([" 10.1.2.3/8 ", "", "  ", "::1"])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "::1/128"]


def test_a_bracketed_ipv6_hop_with_a_port_is_parsed() -> None:
    assert ip("127.0.0.1", xff="6.6.6.6, [2001:db8::1]:443") == "2001:db8::1"


def test_an_unparseable_right_most_hop_does_not_let_the_client_choose_its_ip() -> None:
    assert ip("127.0.0.1", xff="6.6.6.6, unknown") != "6.6.6.6"
