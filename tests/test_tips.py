"""The tip base (liteinfer/profile/tips/*.json) and `liteinfer doctor`'s use of it: the schema
refuses bad tips, every fixture machine gets the tips that match it and none that contradict
it, --apply writes a valid config, docs/tips.md is what the data says, and a real server whose
queue fills is told so by `doctor --server`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from liteinfer.core.config import DeviceConfig, load_config, save_config
from liteinfer.core.errors import LiteInferError
from liteinfer.profile import facts as F
from liteinfer.profile.tips import TIPS_DIR, Tip, apply_changes, evaluate, load_file, load_tips

ROOT = Path(__file__).parent.parent
HW = Path(__file__).parent / "fixtures" / "hw"

# What each recorded machine is, in the tip base's family names.
FIXTURE_FAMILIES = {
    "x86-vm": {"cloud", "vm", "x86", "container"},
    "container-2cpu-4g": {"cloud", "vm", "x86", "container"},
    "raspberry-pi-5": {"raspberry-pi", "arm"},
    "orange-pi-5": {"rockchip", "arm"},
    "jetson-orin-nano": {"jetson", "arm"},
    "mac-mini-m2": {"apple", "arm"},
}
# Tips each fixture must get (with the change they must carry), and tips that would contradict it.
EXPECTED = {
    "x86-vm": {"cloud-vm-no-counters": None, "cloud-avx512-build": None, "memory-mlock-limit-raise": None},
    "container-2cpu-4g": {"memory-container-limit": None, "container-threads-match-quota": {"engine.n_threads": 2},
                          "container-cpuset": None},
    "raspberry-pi-5": {"rpi-cooling": None, "rpi-check-throttled": None, "rpi5-power-supply": None},
    "orange-pi-5": {"rk3588-four-big-cores": {"engine.n_threads": 4}, "rk3588-q4_0-repack": None},
    "jetson-orin-nano": {"jetson-nvpmodel-max": None, "jetson-clocks": None, "jetson-cpu-build": None},
    "mac-mini-m2": {"apple-p-cores": {"engine.n_threads": 4}, "container-mac-docker": None,
                    "memory-mlock-macos": {"engine.use_mlock": True}},
}
CONTRADICT = {
    "x86-vm": ["threads-big-little-big-only", "quant-arm-no-dotprod", "threads-smt-physical-only",
               "container-fractional-quota", "power-powersave-governor"],
    "container-2cpu-4g": ["container-fractional-quota", "memory-swap-zram", "threads-big-little-big-only"],
    "raspberry-pi-5": ["rpi4-q4_0", "quant-arm-no-dotprod", "threads-big-little-big-only", "rpi3-soft-limit",
                       "power-no-cpufreq", "memory-container-limit"],
    "orange-pi-5": ["threads-big-little-big-only", "memory-swap-zram", "rpi-cooling", "jetson-clocks"],
    "jetson-orin-nano": ["threads-big-little-big-only", "rk3588-four-big-cores", "apple-p-cores"],
    "mac-mini-m2": ["memory-mlock-limit-raise", "threads-big-little-big-only", "memory-swap-zram",
                    "thermal-zones-watch", "power-no-meter"],
}
# A model for the model-fact tips: the test suite's default (SmolLM2-135M Q4_1).
MODEL_TIPS = {"quant-imatrix-q4_0", "quant-q4_1-reproducible", "quant-eval-before-deploy"}


def run(*args, timeout=300, input=None):
    # scripts by their full path; the working directory stays the suite's empty one (conftest.py)
    args = [str(ROOT / a) if a.endswith(".py") else a for a in args]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, input=input,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def doctor(*args, **kw):
    return run("-m", "liteinfer", "doctor", *args, **kw)


def tip(**over) -> dict:
    base = {"id": "t-example", "title": "An example", "when": "usable_cores >= 1",
            "advice": "Do the thing because of the reason.", "config": {"engine.n_threads": 1},
            "effect": "small", "expect": "Something changes.",
            "evidence": {"kind": "source", "url": "https://example.org/doc", "title": "Doc",
                         "says": "The doc says the thing helps."}}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def write_tips(folder: Path, name: str, *tips: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"tips": list(tips)}))
    return path


# --- the schema -----------------------------------------------------------------------------


@pytest.mark.parametrize("change,message", [
    ({"evidence": None}, "field evidence: Field required"),
    ({"when": "cpu.avx9000 and usable_cores > 1"}, "unknown condition field 'cpu.avx9000'"),
    ({"when": "config.engine.threads > 1"}, "unknown condition field 'config.engine.threads'"),
    ({"when": "__import__('os').system('true')"}, "is not allowed"),
    ({"config": {"engine.threads": 1}}, "unknown config field 'engine.threads'"),
    ({"config": None}, "a tip needs a change"),
    ({"evidence": {"kind": "measured", "command": "liteinfer bench", "machine": "my laptop", "numbers": ""}},
     "field evidence.measured.numbers"),
    ({"evidence": {"kind": "source", "url": "http://insecure.example", "title": "x", "says": "says nothing useful"}},
     "field evidence.source.url"),
    ({"evidence": {"kind": "hearsay", "says": "a friend said so"}}, "field evidence"),
    ({"families": ["mainframe"]}, "unknown family 'mainframe'"),
    ({"advice": "Set threads to {cpu.cores_total} now."}, "unknown field {cpu.cores_total}"),
])
def test_schema_refuses_bad_tips(tmp_path, change, message):
    path = write_tips(tmp_path, "threads", tip(), tip(id="t-bad", **change))
    with pytest.raises(LiteInferError) as e:
        load_file(path)
    text = str(e.value)
    assert str(path) in text and "tip 't-bad'" in text and message in text, text


def test_duplicate_ids_and_bad_json_are_refused(tmp_path):
    write_tips(tmp_path / "a", "threads", tip())
    write_tips(tmp_path / "a", "memory", tip())
    with pytest.raises(LiteInferError, match="tip id 't-example' is in both"):
        load_tips([tmp_path / "a"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.json").write_text("{not json")
    with pytest.raises(LiteInferError, match="not valid JSON"):
        load_tips([tmp_path / "b"])


def test_conditions_decide_three_ways():
    t = Tip.model_validate(tip(when="model.size_mb > 100 and usable_cores >= 2"))
    assert t.sources == {"model", "probe"}
    assert t.applies({"usable_cores": 4, "model.size_mb": F.MISSING}) is None  # no model: undecided
    assert t.applies({"usable_cores": 4, "model.size_mb": 300.0}) is True
    assert t.applies({"usable_cores": 1, "model.size_mb": 300.0}) is False
    unl = Tip.model_validate(tip(when="mem.memlock_mb != none and mem.memlock_mb < 64"))
    assert unl.applies({"mem.memlock_mb": None}) is False  # unlimited: neither < nor >
    assert unl.applies({"mem.memlock_mb": 8}) is True
    isa = Tip.model_validate(tip(when="'dotprod' not in cpu.isa and cpu.arch in ['aarch64', 'arm64']"))
    assert isa.applies({"cpu.isa": ["neon"], "cpu.arch": "aarch64"}) is True
    assert isa.applies({"cpu.isa": ["neon", "dotprod"], "cpu.arch": "aarch64"}) is False


# --- the base itself --------------------------------------------------------------------------


def _anchors(md: Path) -> set[str]:
    out = set()
    for line in md.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def test_the_base_has_200_tips_a_quarter_measured_with_evidence_that_exists():
    tips = load_tips()
    measured = [t for t in tips if t.evidence.kind == "measured"]
    print(f"{len(tips)} tips, {len(measured)} measured with liteinfer, {len(tips) - len(measured)} public sources")
    assert len(tips) >= 200
    assert len(measured) >= len(tips) / 4
    assert {t.topic for t in tips} >= {"threads", "numa", "memory", "kv-cache", "batching", "quantization", "onnx",
                                       "power", "thermals", "containers", "cloud", "storage", "http", "live",
                                       "raspberry-pi", "rockchip", "jetson", "apple", "x86-mini"}
    for t in measured:  # each measured case points at the doc that records it
        path, _, anchor = t.evidence.doc.partition("#")
        assert (ROOT / path).exists(), (t.id, path)
        if anchor:
            assert anchor in _anchors(ROOT / path), (t.id, t.evidence.doc)
    families_in_library = {json.loads(p.read_text())["family"] for p in (ROOT / "liteinfer/hardware/devices").glob("*.json")}
    covered = {f for t in tips for f in t.families}
    assert families_in_library <= covered, families_in_library - covered  # every device family has tips


def test_docs_tips_md_is_up_to_date():
    r = run("scripts/gen_tips_doc.py", "--check")
    assert r.returncode == 0, r.stderr
    text = (ROOT / "docs/tips.md").read_text()
    assert len(re.findall(r"^### `", text, re.M)) == len(load_tips())
    assert "tips.md" in (ROOT / "docs/tuning.md").read_text()  # the manual links the reference


# --- doctor on each recorded machine ----------------------------------------------------------


@pytest.mark.parametrize("fixture", sorted(FIXTURE_FAMILIES))
def test_doctor_prints_the_tips_that_match_each_fixture(fixture, default_model_path):
    r = doctor("--root", str(HW / fixture), "--json", "--model", str(default_model_path))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    got = {t["id"]: t for t in report["tips"]}
    for tid, change in EXPECTED[fixture].items():
        assert tid in got, (fixture, tid, sorted(got))
        for key, value in (change or {}).items():
            assert got[tid]["config"][key] == value, (tid, got[tid]["config"])
    assert not set(CONTRADICT[fixture]) & set(got), set(CONTRADICT[fixture]) & set(got)
    by_id = {t.id: t for t in load_tips()}
    for tid in got:  # a tip about a device family is printed only on a machine of that family
        fams = set(by_id[tid].families)
        assert not fams or fams & FIXTURE_FAMILIES[fixture], (fixture, tid, fams)
    # no two tips ask for different values of one config field
    wanted: dict[str, tuple] = {}
    for t in report["tips"]:
        for key, value in t["config"].items():
            if key in wanted:
                assert wanted[key][0] == value, (fixture, key, wanted[key], (value, t["id"]))
            wanted.setdefault(key, (value, t["id"]))
    assert report["tips"] == sorted(report["tips"], key=lambda t: -{"large": 3, "medium": 2, "small": 1}[t["effect"]])
    for t in report["tips"]:
        for text in (t["advice"], t["expect"], t["command"] or ""):
            assert not re.search(r"\{[a-z_][a-z0-9_.]*\}", text), (t["id"], text)  # every template filled
        assert t["evidence"]["kind"] in ("measured", "source")
    assert report["tips_undecided"].get("live", 0) >= 10  # the live tips wait for --server
    if fixture == "x86-vm":
        assert MODEL_TIPS & set(got), sorted(got)  # SmolLM2's header reached the model tips
    text = doctor("--root", str(HW / fixture), "--model", str(default_model_path))
    assert text.returncode == 0 and "tips:" in text.stdout
    first = report["tips"][0]
    assert f"1. [{first['effect']}] {first['id']}" in text.stdout


@pytest.mark.parametrize("fixture", sorted(FIXTURE_FAMILIES))
def test_tips_do_not_undo_the_planners_choices(fixture, tmp_path, default_model_path):
    """The advisor and the planner agree: on a freshly planned config no tip asks for a change."""
    path = tmp_path / "device_config.json"
    r = run("-m", "liteinfer", "profile", "--no-measure", "--root", str(HW / fixture), "-o", str(path))
    assert r.returncode == 0, r.stderr
    r = doctor("--root", str(HW / fixture), "--config", str(path), "--model", str(default_model_path), "--json")
    assert r.returncode == 0, r.stderr
    # engine.use_mlock aside: a --no-measure plan does not know the weights' size, so it never turns
    # mlock on; a measured plan follows the same rule the mlock tips state
    changes = {(t["id"], k): v for t in json.loads(r.stdout)["tips"] for k, v in t["config"].items()
               if k != "engine.use_mlock"}
    assert not changes, changes


def test_tips_without_a_model_wait_for_one():
    r = doctor("--root", str(HW / "x86-vm"), "--json")
    report = json.loads(r.stdout)
    assert report["tips_undecided"]["model"] >= 20
    assert not any(t["needs"] and "model" in t["needs"] for t in report["tips"])
    assert "more tips need a model (--model)" in doctor("--root", str(HW / "x86-vm")).stdout
    every = doctor("--root", str(HW / "x86-vm"), "--all-tips", "--json")
    states = {row["id"]: row["state"] for row in json.loads(every.stdout)["all_tips"]}
    assert len(states) == len(load_tips())
    assert states["cloud-vm-no-counters"] == "applies" and states["rpi-cooling"] == "no"
    assert states["quant-imatrix-q4_0"] == "undecided" and states["live-queue-full"] == "undecided"


def test_this_machine_uses_the_downloaded_default_model_and_never_fetches(default_model_path, tmp_path):
    r = doctor("--json")  # this machine, no config: the default model, already in the cache (fixture)
    report = json.loads(r.stdout)
    assert "model" not in report["tips_undecided"], report["tip_notes"]
    empty = {**os.environ, "PYTHONPATH": str(ROOT), "LITEINFER_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, "-m", "liteinfer", "doctor", "--json"], capture_output=True, text=True,
                       env=empty, timeout=300)
    report = json.loads(r.stdout)
    assert report["tips_undecided"]["model"] >= 20
    assert any("is not on this machine yet" in n for n in report["tip_notes"]), report["tip_notes"]
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*.gguf"))  # nothing fetched


def test_every_applicable_change_validates_on_every_fixture():
    tips = load_tips()
    for fixture in FIXTURE_FAMILIES:
        from liteinfer.hardware.probe import probe

        p = probe(HW / fixture)
        facts = {**F.probe_facts(p), **F.config_facts(None), **F.missing("model"), **F.missing("live")}
        applied, _ = evaluate(tips, facts)
        cfg, done = apply_changes(DeviceConfig(), applied)
        assert isinstance(cfg, DeviceConfig)
        assert len({k for k, *_ in done}) == len(done)


def test_apply_writes_the_changes_after_a_yes(tmp_path):
    path = tmp_path / "device_config.json"
    save_config(DeviceConfig(), path)  # a config of the defaults, as a user might have
    before = path.read_text()
    r = doctor("--root", str(HW / "orange-pi-5"), "--config", str(path), "--apply", input="n\n")
    assert "engine.n_threads: null -> 4  (rk3588-four-big-cores)" in r.stderr, r.stderr
    assert "nothing written" in r.stderr and path.read_text() == before
    r = doctor("--root", str(HW / "orange-pi-5"), "--config", str(path), "--apply", input="y\n")
    assert r.returncode == 0, r.stderr
    cfg = load_config(path)
    assert cfg.engine.n_threads == 4 and cfg.power.profile == "dynamic"
    # applied once, a second run has nothing left for those fields
    again = json.loads(doctor("--root", str(HW / "orange-pi-5"), "--config", str(path), "--json").stdout)
    assert "rk3588-four-big-cores" not in {t["id"] for t in again["tips"]}


def test_adding_a_tip_as_documented(tmp_path):
    """docs/tips.md#adding-a-tip: a new file in the tips folder is validated and evaluated."""
    extra = tmp_path / "tips"
    write_tips(extra, "my-topic", tip(id="my-vm-tip", when="cpu.hypervisor and usable_cores <= 2",
                                      advice="A VM with {usable_cores} cores: pin the server.",
                                      config={"scheduler.max_batch": 8}, families=["vm"]))
    r = doctor("--root", str(HW / "x86-vm"), "--tips", str(extra), "--json")
    assert r.returncode == 0, r.stderr
    mine = [t for t in json.loads(r.stdout)["tips"] if t["id"] == "my-vm-tip"]
    assert mine and mine[0]["advice"] == "A VM with 2 cores: pin the server." and mine[0]["topic"] == "my-topic"
    r = doctor("--root", str(HW / "raspberry-pi-5"), "--tips", str(extra), "--json")
    assert "my-vm-tip" not in {t["id"] for t in json.loads(r.stdout)["tips"]}
    write_tips(extra, "my-topic", tip(id="my-vm-tip", when="cpu.is_vm"))
    r = doctor("--root", str(HW / "x86-vm"), "--tips", str(extra))
    assert r.returncode == 1 and "unknown condition field 'cpu.is_vm'" in r.stderr and "my-vm-tip" in r.stderr
    assert "Traceback" not in r.stderr
    doc = (ROOT / "docs/tips.md").read_text()
    assert "## Adding a tip" in doc and str(TIPS_DIR.relative_to(ROOT)) in doc


# --- a live server ------------------------------------------------------------------------------


def test_doctor_server_names_the_queue_tip_when_the_queue_fills(default_model_path):
    import httpx
    from conftest import ServerProcess

    srv = ServerProcess("-m", str(default_model_path), "--ctx", "1024", "--max-batch", "1", "--max-queue", "1",
                        "--fixed-batch", "--threads", "1")
    done = threading.Event()
    codes: list[int] = []

    def client() -> None:  # keeps the queue full until doctor has watched it
        with httpx.Client(timeout=120) as c:
            while not done.is_set():
                r = c.post(srv.url + "/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 48,
                                                              "temperature": 0})
                codes.append(r.status_code)
                if r.status_code == 429:
                    time.sleep(0.05)

    workers = [threading.Thread(target=client) for _ in range(6)]
    try:
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
        for name in ("liteinfer_queue_limit 1.0", "liteinfer_target_ttft_seconds", "liteinfer_kv_cells_total",
                     "liteinfer_kv_preemptions_total", "liteinfer_outside_cpu_load"):
            assert name in metrics, name
        if any(Path(p).exists() for p in ("/sys/fs/cgroup/cpu.stat", "/sys/fs/cgroup/cpu/cpu.stat")):
            assert "liteinfer_cgroup_throttled_seconds_total" in metrics  # read where the kernel has it
        for w in workers:
            w.start()
        deadline = time.monotonic() + 60
        while 429 not in codes and time.monotonic() < deadline:  # the queue has filled
            time.sleep(0.1)
        assert 429 in codes, codes
        r = doctor("--server", srv.url, "--window", "6", "--json", timeout=180)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
    finally:
        done.set()
        for w in workers:
            w.join(timeout=150)
        srv.stop()
    live = report["live"]
    ids = [t["id"] for t in report["tips"]]
    assert live["live.rejected_queue_full"] > 0 or live["live.queue_full_fraction"] > 0.05, live
    assert "live-queue-full" in ids, (ids, live)
    assert "live.ttft_p95_ms" in live and live["live.window_s"] >= 6
    if any(Path(p).exists() for p in ("/sys/fs/cgroup/cpu.stat", "/sys/fs/cgroup/cpu/cpu.stat")):
        assert live["live.cgroup_throttled_s"] is not None and live["live.cgroup_throttled_s"] >= 0
    queue_tip = next(t for t in report["tips"] if t["id"] == "live-queue-full")
    assert "429" in queue_tip["advice"] and queue_tip["needs"] == ["live"]


def test_doctor_server_with_api_keys_and_a_wrong_url(default_model_path):
    from conftest import ServerProcess, free_port

    srv = ServerProcess("-m", str(default_model_path), "--ctx", "512", "--api-key", "k-123")
    try:
        r = doctor("--server", srv.url, "--window", "1", "--json")
        assert r.returncode == 1 and "HTTP 401" in r.stderr and "--api-key" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        r = doctor("--server", srv.url, "--window", "1", "--api-key", "k-123", "--json")
        assert r.returncode == 0, r.stderr
        live = json.loads(r.stdout)["live"]
        assert live["live.window_s"] >= 1 and live["live.requests"] == 0 and live["live.queue_full_fraction"] == 0
        assert "live-queue-full" not in {t["id"] for t in json.loads(r.stdout)["tips"]}  # an idle server
    finally:
        srv.stop()
    r = doctor("--server", f"http://127.0.0.1:{free_port()}", "--window", "1")
    assert r.returncode == 1 and "cannot connect" in r.stderr and "Traceback" not in r.stderr


def test_every_liteinfer_command_in_a_tip_exists_with_its_flags():
    """A tip's `liteinfer ...` command names a real subcommand and only flags it accepts."""
    helps: dict[tuple[str, ...], str] = {}
    checked = 0
    for t in load_tips():
        for part in re.split(r"&&|;|\|", t.command or ""):
            words = part.split("#")[0].split()
            if not words or words[0] != "liteinfer":
                continue
            sub = tuple(w for w in words[1:3] if not w.startswith("-") and w.isidentifier())[:1]
            if sub and sub[0] in ("power", "eval") and len(words) > 2:  # commands with subcommands
                sub = (words[1], words[2])
            if sub not in helps:
                r = run("-m", "liteinfer", *sub, "--help")
                assert r.returncode == 0, (t.id, sub, r.stderr)
                helps[sub] = r.stdout
            for flag in (w.split("=")[0] for w in words if w.startswith("--")):
                assert flag in helps[sub], (t.id, " ".join(sub), flag)
            checked += 1
    assert checked >= 40
