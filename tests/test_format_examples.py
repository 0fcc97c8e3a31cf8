"""Every coded-chunk example in docs/format.md decodes to the raw bytes and id it states, read
with nothing but the framing and codec code (a second reader would do the same from the text);
the example of a file entry whose tensor map stays in the header is the file it describes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from blake3 import blake3
from safetensors.numpy import save_file

from modelkeep.store import Kind
from modelkeep.store import codec as framing
from modelkeep.store.coding import decode
from modelkeep.store.ingest import chunk_list
from modelkeep.store.safetensors import read_layout
from modelkeep.store.snapshot import INLINE_TENSORS, parse_file_entry

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


def _map_in_header_entry() -> dict[str, object]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)
    [entry] = [json.loads(b) for b in blocks if '"safetensors": {"header_end"' in b]
    assert isinstance(entry, dict)
    return entry


def test_the_map_in_header_example_is_the_file_it_describes(tmp_path: Path) -> None:
    # §5.4: the entry of a file whose tensor map stays in its header parses as stated, and is
    # what storing the file it names gives, chunk for chunk.
    entry = parse_file_entry(_map_in_header_entry(), "example")
    assert entry.tensors is None and entry.is_safetensors
    path = tmp_path / "model.safetensors"
    save_file({f"layers.{i}.w": np.array([i], np.float32) for i in range(100_000)}, str(path))
    assert chunk_list(path, "model.safetensors") == list(entry.chunks)
    with open(path, "rb") as f:
        layout = read_layout(f, entry.size)
    assert layout is not None and layout.header_end == entry.header_end
    assert len(layout.tensors) > INLINE_TENSORS
