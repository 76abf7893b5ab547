"""The device library: every entry validates, and each fixture machine matches the right one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from liteinfer.core.errors import LiteInferError
from liteinfer.hardware.devices import DEVICES_DIR, load_library, match
from liteinfer.hardware.probe import probe

HW = Path(__file__).parent / "fixtures" / "hw"


def test_library_has_20_plus_valid_entries_with_sources():
    lib = load_library()
    assert len(lib) >= 20
    assert len({e.id for e in lib}) == len(lib)
    families = {e.family for e in lib}
    assert {"raspberry-pi", "rockchip", "jetson", "apple", "intel-mini", "amd-mini", "x86-server", "cloud"} <= families
    for e in lib:
        assert e.sources and all(len(s) > 10 for s in e.sources), e.id
        assert e.cpu.cores == sum(c.count for c in e.cpu.clusters), e.id
        assert e.cpu.threads == sum(c.count * c.threads_per_core for c in e.cpu.clusters), e.id
        assert e.recommended.n_threads <= e.cpu.cores, e.id
        if e.memory.bandwidth_gbs and e.memory.bus_bits:
            # peak bandwidth = transfer rate x bus width: the type string carries the rate
            rate = int(re.search(r"-(\d+)", e.memory.type).group(1))
            assert e.memory.bandwidth_gbs == pytest.approx(rate * e.memory.bus_bits / 8 / 1000, rel=0.03), e.id


@pytest.mark.parametrize("fixture,expected,closeness", [
    ("x86-vm", "cloud-vm-2vcpu-avx512", "close"),
    ("raspberry-pi-5", "raspberry-pi-5-8gb", "exact"),
    ("jetson-orin-nano", "jetson-orin-nano-8gb", "exact"),
    ("orange-pi-5", "orange-pi-5-16gb", "exact"),
    ("mac-mini-m2", "mac-mini-m2-16gb", "exact"),
    ("container-2cpu-4g", "cloud-vm-2vcpu-avx512", "close"),
])
def test_fixture_matches(fixture, expected, closeness):
    ranked = match(probe(HW / fixture))
    best = ranked[0]
    assert best.entry.id == expected, [(m.entry.id, m.score) for m in ranked[:3]]
    assert best.closeness == closeness
    assert best.score > ranked[1].score
    # an entry of the other architecture never comes close
    assert all(m.score <= 0.1 for m in ranked if m.entry.cpu.arch.replace("arm64", "aarch64")
               != best.entry.cpu.arch.replace("arm64", "aarch64"))


def test_memory_size_lowers_the_score_but_keeps_the_board():
    p = probe(HW / "raspberry-pi-5")
    full = match(p)[0]
    p.memory.total_mb = 2048  # a 2 GB Pi 5
    small = match(p)[0]
    assert small.entry.id == "raspberry-pi-5-8gb" and small.score < full.score
    assert any("memory" in r for r in small.reasons)


def test_bad_entry_is_one_line_naming_file_and_field(tmp_path):
    entry = json.loads((DEVICES_DIR / "raspberry-pi-5-8gb.json").read_text())
    entry["memory"]["gb"] = -1
    (tmp_path / "raspberry-pi-5-8gb.json").write_text(json.dumps(entry))
    with pytest.raises(LiteInferError, match=r"raspberry-pi-5-8gb.json: field memory.gb"):
        load_library(str(tmp_path))
    entry["memory"]["gb"] = 8
    entry["sources"] = []
    (tmp_path / "raspberry-pi-5-8gb.json").write_text(json.dumps(entry))
    with pytest.raises(LiteInferError, match="field sources"):
        load_library(str(tmp_path))
    entry["sources"] = ["a datasheet by name"]
    (tmp_path / "raspberry-pi-5-8gb.json").rename(tmp_path / "other-name.json")
    (tmp_path / "other-name.json").write_text(json.dumps(entry))
    with pytest.raises(LiteInferError, match="must equal the file name"):
        load_library(str(tmp_path))


def test_every_entry_is_documented_and_doc_links_resolve():
    docs = Path(__file__).parent.parent / "docs" / "hardware"
    pages = {p.name: p.read_text() for p in docs.glob("*.md")}
    assert len(pages) >= 7 and "adding-a-device.md" in pages
    text = "\n".join(pages.values())
    missing = [e.id for e in load_library() if f"`{e.id}`" not in text and e.id not in pages["index.md"]]
    assert missing == []
    for name, body in pages.items():
        for target in re.findall(r"\]\(([^)#:]+\.md)", body):
            assert (docs / target).exists(), f"{name} links to missing {target}"
