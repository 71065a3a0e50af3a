import pytest

from trios3.core.etag import backend_condition, client_etag, part_count


def test_encrypted_single_put_etag_gets_the_zero_suffix():
    assert client_etag('"0123abcd"', True) == '"0123abcd-0"'


def test_foreign_and_multipart_etags_are_unchanged():
    assert client_etag('"0123abcd"', False) == '"0123abcd"'
    assert client_etag('"0123abcd-3"', True) == '"0123abcd-3"'
    assert client_etag("", True) == ""


def test_conditions_lose_the_suffix_for_the_backend():
    assert backend_condition('"0123abcd-0"') == '"0123abcd"'
    assert backend_condition('"aa-0", W/"bb-0", "cc-2"') == '"aa", W/"bb", "cc-2"'
    assert backend_condition("*") == "*"
    assert backend_condition("0123abcd-0") == "0123abcd"


def test_round_trip_through_a_condition_gives_the_backend_etag():
    backend = '"d41d8cd98f00b204e9800998ecf8427e"'
    assert backend_condition(client_etag(backend, True)) == backend


@pytest.mark.parametrize(
    ("etag", "count"),
    [
        ('"d41d8cd98f00b204e9800998ecf8427e-3"', 3),
        ('"d41d8cd98f00b204e9800998ecf8427e-1"', 1),
        ('"d41d8cd98f00b204e9800998ecf8427e-10000"', 10_000),
        ("d41d8cd98f00b204e9800998ecf8427e-12", 12),  # unquoted
        ('"d41d8cd98f00b204e9800998ecf8427e-2" ', 2),  # trailing whitespace
    ],
)
def test_part_count_of_a_multipart_etag(etag, count):
    assert part_count(etag) == count


@pytest.mark.parametrize(
    "etag",
    [
        '"d41d8cd98f00b204e9800998ecf8427e"',  # a single PUT
        '"d41d8cd98f00b204e9800998ecf8427e-0"',  # the proxy's own suffix
        "",
        '"abc-"',
        '"abc-3x"',
        '"a-3-b"',
    ],
)
def test_part_count_of_any_other_etag_is_none(etag):
    assert part_count(etag) is None


def test_part_count_of_what_clients_see_matches_the_backend():
    backend = '"0123abcd-4"'
    assert part_count(client_etag(backend, True)) == part_count(backend) == 4
    assert part_count(client_etag('"0123abcd"', True)) is None
