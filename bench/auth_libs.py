"""What an OAuth 2 client library costs a command before its first request: the import time of
the libraries that could run modelkeep's sign-in, measured in fresh interpreters, interleaved
(each round imports every candidate once, in turn), so all of them share the machine's load.

    .venv/bin/python bench/auth_libs.py --repeat 7

Candidates (whichever are installed): authlib's requests client (generic OAuth 2 / OpenID
Connect: client credentials, refresh, any grant type such as the device code), joserfc (ID-token
checks, authlib's JOSE library), msal (Microsoft Entra only) and google-auth (Google only). The
baseline is ``requests``, which the registry adapter imports anyway. Prints a Markdown table of
medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys

CANDIDATES = {
    "requests (baseline)": "requests",
    "authlib requests client": "authlib.integrations.requests_client",
    "joserfc (ID token check)": "joserfc.jwt",
    "msal": "msal",
    "google-auth": "google.oauth2.service_account",
}
PROBE = ("import time; t = time.perf_counter(); import {module}; "
         "print(time.perf_counter() - t)")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except ValueError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    present = {label: m for label, m in CANDIDATES.items() if installed(m)}
    times: dict[str, list[float]] = {label: [] for label in present}
    for _ in range(args.repeat):
        for label, module in present.items():
            out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)],
                                 check=True, capture_output=True, text=True).stdout
            times[label].append(float(out))
    print("| library | module imported | import, median ms |")
    print("|---|---|---|")
    for label, module in present.items():
        print(f"| {label} | `{module}` | {statistics.median(times[label]) * 1000:.0f} |")


if __name__ == "__main__":
    main()
