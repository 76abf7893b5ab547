"""`liteinfer power status` and `liteinfer power set PROFILE`: the policy set once, by hand.

The server applies `power.profile` itself (server/power.py): at start, put back at exit, and
with `dynamic` switched by the load while it runs. cpufreq and the meters live in hardware/.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from liteinfer.core.errors import LiteInferError
from liteinfer.hardware import cpufreq, meters


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("power", help="CPU frequency policy and energy meters")
    psub = p.add_subparsers(dest="power_command", metavar="ACTION", required=True)

    s = psub.add_parser("status", help="governor, EPP, frequency limits and energy meters")
    s.add_argument("--sysfs", default="/sys", help=argparse.SUPPRESS)  # a fake tree in tests
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--measure", type=float, default=0.0, metavar="SEC",
                   help="also measure idle power for SEC seconds with the first meter")
    s.set_defaults(func=cmd_status)

    t = psub.add_parser("set", help="apply a power profile to every cpufreq policy")
    t.add_argument("profile", choices=cpufreq.PROFILES)
    t.add_argument("--sysfs", default="/sys", help=argparse.SUPPRESS)
    t.add_argument("--min-freq", type=int, metavar="KHZ", help="also set scaling_min_freq")
    t.add_argument("--max-freq", type=int, metavar="KHZ", help="also set scaling_max_freq")
    t.add_argument("--dry-run", action="store_true", help="print the writes, change nothing")
    t.add_argument("--config", metavar="PATH",
                   help="also record the profile as power.profile in this device_config.json (serve applies it at start)")
    t.set_defaults(func=cmd_set)


def _khz(v: int | None) -> str:
    return f"{v / 1e6:.2f} GHz" if v else "?"


def cmd_status(args: argparse.Namespace) -> int:
    policies = cpufreq.read_policies(args.sysfs)
    found, why = meters.find_meters(args.sysfs)
    reading = None
    if args.measure > 0 and found:
        m = found[0]
        m.start()
        time.sleep(args.measure)
        reading = m.stop()
    if args.json:
        out = {
            "cpufreq": [{**asdict(p), "path": str(p.path)} for p in policies] or "unavailable",
            "meters": [m.name for m in found] or "unavailable",
            "meters_unavailable": why,
        }
        if reading:
            out["idle_watts"] = round(reading.watts, 3)
        print(json.dumps(out, indent=2))
        return 0
    if not policies:
        print(f"cpufreq: unavailable (no policies under {args.sysfs}/{cpufreq.CPUFREQ_DIR}; "
              "virtual machines and containers usually hide it)")
    for p in policies:
        epp = f"  epp {p.epp} (of {' '.join(p.epps)})" if p.epp else ""
        print(f"{p.name} cpus {','.join(map(str, p.cpus)) or '?'}  driver {p.driver or '?'}  "
              f"governor {p.governor or '?'} (of {' '.join(p.governors) or '?'}){epp}")
        print(f"  limits {_khz(p.min_khz)} - {_khz(p.max_khz)}  hardware {_khz(p.hw_min_khz)} - "
              f"{_khz(p.hw_max_khz)}  now {_khz(p.cur_khz)}")
    if found:
        print("energy meters: " + ", ".join(m.name for m in found) + f" (using {found[0].name})")
    else:
        print("energy meters: unavailable")
    for source, reason in why.items():
        print(f"  {source}: {reason}")
    if reading:
        print(f"idle power: {reading.watts:.2f} W over {reading.seconds:.1f} s")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    policies = cpufreq.read_policies(args.sysfs)
    if not policies:
        raise LiteInferError(
            f"cpufreq unavailable: no policies under {args.sysfs}/{cpufreq.CPUFREQ_DIR} "
            "(virtual machine, container, or a kernel without cpufreq); nothing changed"
        )
    plan = {}
    for p in policies:
        writes = cpufreq.plan_profile(p, args.profile)
        writes.update(cpufreq.set_limits(p, args.min_freq, args.max_freq))
        if writes:
            plan[p.path] = writes
    if args.dry_run:
        for d, w in plan.items():
            for k, v in w.items():
                print(f"would write {d.name}/{k} = {v}")
        return 0
    changes = cpufreq.apply(plan)
    for line in changes or ["already in this profile: nothing to change"]:
        print(line)
    if args.profile == "dynamic":
        print("dynamic: the idle (powersave) state is applied; only a running `liteinfer serve` with "
              "power.profile=dynamic switches to performance under load")
    if not args.config:
        print("this stays until changed or rebooted; `liteinfer serve` applies the config's power.profile "
              "itself at start and puts the previous policy back at exit")
    if args.config:
        # on use: pulls in pydantic (start-up, memory)
        from liteinfer.core.config import load_config, save_config

        cfg = load_config(args.config)
        cfg.power.profile = args.profile
        save_config(cfg, args.config)
        print(f"recorded power.profile={args.profile} in {args.config}")
    return 0
