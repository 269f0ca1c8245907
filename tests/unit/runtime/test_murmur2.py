"""The ingress's murmur2 puts every key on the partition any Kafka client would (aiokafka's
default partitioner), for keys of every length."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from notaflow.bus import murmur2
from notaflow.topics import document_key


@given(st.binary(max_size=300))
def test_murmur2_is_kafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


def test_document_keys() -> None:
    for n in range(200):
        key = document_key("tenant", "nfse", f"ref{n}" * (n % 7 + 1))
        assert murmur2(key) == aiokafka_murmur2(key)
