"""Every coded-chunk example in docs/format.md decodes to the raw bytes and id it states, read
with nothing but the framing and codec code (a second reader would do the same from the text)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from blake3 import blake3

from modelkeep.store import Kind
from modelkeep.store import codec as framing
from modelkeep.store.coding import decode

DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"


def _examples() -> list[dict[str, bytes]]:
    blocks = re.findall(r"```example\n(.*?)```", DOC.read_text(), flags=re.S)
    out = []
    for block in blocks:
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
        out.append({k: bytes.fromhex(v.strip()) for k, v in fields.items()})
    return out


EXAMPLES = _examples()


def test_the_document_shows_an_example_of_every_codec() -> None:
    codecs = {framing.split(e["object"], Kind.CHUNK, "example")[0].codec for e in EXAMPLES}
    assert codecs == set(framing.KNOWN_CODECS)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e["id"].hex()[:12])
def test_each_example_decodes_to_its_raw_bytes(example: dict[str, bytes]) -> None:
    header, payload = framing.split(example["object"], Kind.CHUNK, "example")
    assert header.coded and header.raw_length == len(example["raw"])
    base = example.get("base")
    raw = decode(header.codec, payload, header.raw_length, "example", base)
    assert bytes(raw) == example["raw"]
    assert blake3(bytes(raw)).digest() == example["id"]
    if base is not None:  # the payload names its base by the base's id
        assert bytes(payload[:32]) == blake3(base).digest()
