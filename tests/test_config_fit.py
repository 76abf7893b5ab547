"""Config fields that do not fit this machine are named in one warning line at start: on
recorded machines (fixture trees), and by a real `serve` process."""

from __future__ import annotations

from pathlib import Path

from conftest import ServerProcess

from liteinfer.core.config import DeviceConfig
from liteinfer.hardware.fingerprint import not_applicable
from liteinfer.hardware.probe import probe

HW = Path(__file__).parent / "fixtures" / "hw"


def test_fields_that_do_not_fit_a_recorded_machine():
    pi = probe(HW / "raspberry-pi-5")  # 4 cores, RLIMIT_MEMLOCK 8 MB
    assert not_applicable(DeviceConfig(), pi) == []  # the defaults fit anywhere
    cfg = DeviceConfig()
    cfg.engine.n_threads = 8
    cfg.engine.use_mlock = True
    cfg.oneshot.intra_op_threads = 4
    odd = not_applicable(cfg, pi, model_bytes=98_362_432)
    assert [o.split(" ")[0] for o in odd] == ["engine.n_threads=8", "engine.use_mlock=true"], odd
    assert "4 usable cores" in odd[0] and "RLIMIT_MEMLOCK is 8 MB" in odd[1]
    cfg.engine.n_threads = 4
    cfg.engine.use_mlock = False
    assert not_applicable(cfg, pi, model_bytes=98_362_432) == []
    # more weights than the machine has memory
    cfg.model = "huge"
    assert not_applicable(cfg, pi, model_bytes=64 << 30)[0].startswith("model=huge (65536 MB of weights")


def test_amx_repack_buffers_are_named():
    p = probe(HW / "x86-vm")
    p.cpu.isa = [*p.cpu.isa, "amx"]
    cfg = DeviceConfig()
    cfg.engine.use_extra_bufts = True
    # a build with AMX code on this AMX CPU: forcing the repack buffers on is named
    assert not_applicable(cfg, p, repack_safe=False)[0].startswith("engine.use_extra_bufts=true (a llama.cpp build")
    assert not_applicable(cfg, p) == []  # the AMX-off build: safe on an AMX CPU too
    cfg.engine.use_extra_bufts = None  # None: the engine decides (off only where unsafe)
    assert not_applicable(cfg, p, repack_safe=False) == []


def test_serve_names_them_in_one_line(default_model_path):
    cores = probe().usable_cores
    srv = ServerProcess("-m", str(default_model_path), "--ctx", "1024", "--threads", str(cores + 62))
    srv.stop()
    out = srv.proc.stdout.read()
    lines = [line for line in out.splitlines() if "do not apply to this machine" in line]
    assert len(lines) == 1, out[-3000:]
    assert f"engine.n_threads={cores + 62} (this machine has {cores} usable cores" in lines[0]
    assert "WARNING" in lines[0]
