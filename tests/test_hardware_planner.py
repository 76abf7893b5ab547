"""plan(probe, entry, measurements) on the fixture machines with fixed measurements.

The measurements are the shape `planner.measure()` returns; the numbers are plausible for
each device (the x86 one is close to what SmolLM2-135M does on the idle development VM).
"""

from __future__ import annotations

from pathlib import Path

from liteinfer.core.config import DeviceConfig
from liteinfer.hardware.devices import best_match, get_entry
from liteinfer.hardware.fingerprint import stale_fields
from liteinfer.hardware.probe import probe
from liteinfer.profile.planner import plan

HW = Path(__file__).parent / "fixtures" / "hw"
SMOLLM = {"model_bytes": 98362432, "kv_bytes_per_token_f16": 23040, "n_ctx_train": 8192}


def run(fixture: str, measurements: dict | None, entry_id: str | None = "auto"):
    p = probe(HW / fixture)
    m = best_match(p)
    entry = m.entry if entry_id == "auto" else (get_entry(entry_id) if entry_id else None)
    return p, plan(p, entry, measurements, match_info=m).config


def test_x86_vm_plan():
    meas = {**SMOLLM, "mem_bandwidth_gbs": 45.0, "prompt_tok_s": 260.0, "decode_tok_s": 120.0,
            "batched_decode_tok_s": {"1": 120.0, "4": 250.0, "16": 380.0, "32": 400.0},
            "threads_batch4_tok_s": {"1": 150.0, "2": 250.0}}
    p, cfg = run("x86-vm", meas)
    e, s = cfg.engine, cfg.scheduler
    assert e.n_threads == e.n_threads_batch == 2
    assert s.max_batch == 32  # knee at 16 (380 is within 5% of 400), one doubling of headroom
    assert e.n_seq_max >= s.max_batch and e.n_batch >= s.prefill_chunk + s.max_batch
    assert (e.type_k, e.type_v, e.flash_attn) == ("q8_0", "q8_0", True)  # half of f16's KV memory
    assert e.n_ctx == 8192  # 32 sequences x 256 cells
    assert e.use_mmap and not e.use_mlock  # RLIMIT_MEMLOCK is 8 MB here
    assert e.use_extra_bufts is None  # no AMX on this EPYC
    assert s.prefill_chunk == 64 and s.target_itl_ms == 200.0
    assert cfg.server.max_queue == 128 and cfg.oneshot.intra_op_threads == 2
    assert cfg.power.profile == "unchanged"  # no cpufreq in the VM
    d = cfg.device
    assert d["match"]["id"] == "cloud-vm-2vcpu-avx512" and d["fingerprint"]["logical_cores"] == 2
    assert d["recommended_model"].endswith("Q4_K_M")  # x86 with AVX2
    assert any(r.startswith("threads=2") for r in d["reasons"])
    DeviceConfig.model_validate_json(cfg.model_dump_json())  # what save_config writes loads back


def test_raspberry_pi_5_plan():
    meas = {**SMOLLM, "mem_bandwidth_gbs": 8.0, "prompt_tok_s": 90.0, "decode_tok_s": 45.0,
            "batched_decode_tok_s": {"1": 45.0, "4": 70.0, "16": 95.0}}
    p, cfg = run("raspberry-pi-5", meas)
    assert cfg.engine.n_threads == 4
    assert cfg.scheduler.max_batch == 32  # knee at the last point (16), doubled
    assert cfg.power.profile == "dynamic"  # cpufreq present, library entry for a 12 W board
    assert cfg.device["recommended_model"] == "0.5B Q4_0"  # ARM: Q4_0; 1.5B would be < 8 tok/s
    assert cfg.scheduler.target_itl_ms == 200.0


def test_orange_pi_5_uses_big_cores_only():
    p, cfg = run("orange-pi-5", {**SMOLLM})
    assert p.usable_cores == 8 and cfg.engine.n_threads == 4
    assert any("big cores" in r for r in cfg.device["reasons"])
    assert cfg.scheduler.max_batch == get_entry("orange-pi-5-16gb").recommended.max_batch  # no curve measured
    assert cfg.device["probe"]["accelerators"] == ["igpu: Arm Mali GPU (kbase)",
                                                   "npu: Rockchip RK3588 NPU (6 TOPS int8)"]


def test_jetson_plan_mlock_allowed():
    meas = {**SMOLLM, "mem_bandwidth_gbs": 30.0, "prompt_tok_s": 150.0, "decode_tok_s": 60.0,
            "batched_decode_tok_s": {"1": 60.0, "4": 155.0, "16": 160.0}}
    p, cfg = run("jetson-orin-nano", meas)
    assert cfg.engine.n_threads == 6
    assert cfg.scheduler.max_batch == 8  # knee at 4 (155 is within 5% of 160), doubled
    assert not cfg.engine.use_mlock  # the default 8 MB RLIMIT_MEMLOCK
    assert cfg.power.profile == "unchanged"  # the Jetson entry leaves power to nvpmodel
    p.memory.memlock_limit_mb = None  # LimitMEMLOCK=infinity in the service unit
    assert plan(p, None, meas).config.engine.use_mlock  # small model, lock allowed: weights stay resident


def test_container_plan_follows_the_cgroup_not_the_host():
    p, cfg = run("container-2cpu-4g", {**SMOLLM, "decode_tok_s": 100.0,
                                        "batched_decode_tok_s": {"1": 100.0, "4": 200.0, "16": 300.0}})
    assert p.cpu.physical_cores == 4 and cfg.engine.n_threads == 2
    assert cfg.device["memory_budget_mb"] == int(4096 * 0.8)
    assert all(m["size_mb"] <= 4096 for m in cfg.device["models"])
    assert "cgroup quota 2 CPUs" in cfg.device["reasons"][0]


def test_tight_memory_switches_kv_to_q8_with_flash_attention():
    p = probe(HW / "raspberry-pi-5")
    p.memory.total_mb, p.memory.available_mb = 1024, 900
    cfg = plan(p, None, {**SMOLLM, "batched_decode_tok_s": {"1": 40.0, "16": 120.0}}).config
    e = cfg.engine
    assert (e.type_k, e.type_v, e.flash_attn) == ("q8_0", "q8_0", True)
    assert e.n_ctx >= 2048
    assert any(r.startswith("kv: q8_0") for r in cfg.device["reasons"])


def test_amx_cpu_keeps_repack_buffers_with_the_amx_off_build():
    """The guard follows the build, not the CPU flags: the project's llama.cpp build has no AMX
    code (scripts/llama_cmake_flags.sh), so an AMX CPU keeps the repack buffers (the engine's
    default, None) and the plan says why."""
    p = probe(HW / "container-2cpu-4g")
    p.cpu.isa = sorted({*p.cpu.isa, "amx", "amx_int8"})
    cfg = plan(p, None, SMOLLM).config
    assert cfg.engine.use_extra_bufts is None
    assert any(r.startswith("use_extra_bufts on: this llama.cpp build has no AMX code")
               for r in cfg.device["reasons"])


def test_no_measurements_no_entry_still_plans():
    p = probe(HW / "x86-vm")
    cfg = plan(p, None, None).config
    assert cfg.engine.n_threads == 2 and cfg.scheduler.max_batch == 8  # 4 per core
    DeviceConfig.model_validate(cfg.model_dump())


def test_plan_is_pure():
    p = probe(HW / "x86-vm")
    a = plan(p, None, dict(SMOLLM)).config.model_dump()
    b = plan(p, None, dict(SMOLLM)).config.model_dump()
    a["device"].pop("profiled_at"), b["device"].pop("profiled_at")
    assert a == b


def test_stale_fields_name_what_changed():
    p_pi, cfg = run("raspberry-pi-5", SMOLLM)
    assert stale_fields(cfg, p_pi) == []
    changed = stale_fields(cfg, probe(HW / "x86-vm"))
    assert any(f.startswith("device.fingerprint.cpu:") for f in changed)
    assert any(f.startswith("device.fingerprint.arch:") for f in changed)


def test_slow_machine_keeps_steps_under_a_second():
    p = probe(HW / "raspberry-pi-5")
    meas = {**SMOLLM, "decode_tok_s": 2.0, "batched_decode_tok_s": {"1": 2.0, "2": 3.0, "4": 3.1}}
    cfg = plan(p, None, meas).config
    assert cfg.scheduler.max_batch == 2  # batch 4 steps take 1.3 s; doubling the knee (2) would too
    assert cfg.scheduler.target_itl_ms == 750.0  # 1500 / 2 tok/s: the latency target follows the machine
