"""Hostile-load figures: each attack of tests/helpers/attacks.py beside a normal client, on its own server.

    python -m tests.bench.attacks [--duration 20] [--json report.json]

Not a test: it asserts nothing. For each attack it prints the normal client's request count, statuses,
p99 and worst latency, how many attackers the server cut, and the server's peak RSS (VmHWM). Limits are
the short ones of tests/test_attacks.py, so that attacks are judged within the run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from tests.helpers import attacks
from tests.helpers.server import RegistryProcess
from tests.test_attacks import SHORT_LIMITS as TEST_LIMITS

# As in the tests, with the per-client limits out of the way: all attackers come from one address, and
# what is measured is that stalled transfers hold no request slot, not that one client is capped.
SHORT_LIMITS = TEST_LIMITS + "max_requests_per_client = 100000\nmax_transfers_per_client = 100000\n"


def _server(folder: Path, config: str) -> RegistryProcess:
    return RegistryProcess(folder, config).start()


def run(duration: float) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="attack-bench-") as root:
        base = Path(root)

        def fresh(name: str, config: str) -> RegistryProcess:
            (base / name).mkdir()
            return _server(base / name, config)

        server = fresh("baseline", SHORT_LIMITS)
        try:
            outcome = attacks.Outcome()
            with attacks.beside_normal_client(server, ["/v2/"], outcome):
                time.sleep(duration / 2)
            outcome.peak_rss_mib = attacks.peak_rss_mib(server)
            report["no attack (baseline)"] = outcome.summary()
        finally:
            server.kill()
        for name, scenario in [
            ("70 stalled readers + 70 one-byte-a-second writers",
             lambda s: attacks.stalled_transfers(s, readers=70, writers=70, duration=duration)),
            ("3000 idle + 1000 slowloris connections",
             lambda s: attacks.idle_and_slowloris(s, idle=3000, slowloris=1000, duration=duration)),
            ("delete racing put of one manifest (16 workers x 100)",
             lambda s: attacks.delete_put_storm(s, workers=16, rounds=100)),
        ]:
            server = fresh(name.split()[0] + str(len(report)), SHORT_LIMITS)
            try:
                report[name] = scenario(server).summary()
            finally:
                server.kill()
        hasher = PasswordHasher()
        logins = [(f"user{n}", f"password-{n}") for n in range(10)]
        identities = "".join(f'[auth.identity.{u}]\nusername = "{u}"\npassword = "{hasher.hash(p)}"\n'
                             for u, p in logins)
        policy = "[global.access_policy]\nrules = ['identity.username != null']\n"
        server = fresh("flood", identities + policy)
        try:
            report["32-client wrong-password flood (normal = 10 first logins)"] = attacks.password_flood(
                server, attackers=32, logins=logins, duration=duration).summary()
        finally:
            server.kill()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = run(args.duration)
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
