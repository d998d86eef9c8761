"""The service definitions in `packaging/`: what `registry service install` writes for the standard
locations, plus how to install them by hand. `python -m app.system_service.packaging` rewrites them;
tests/test_service_systemd.py and tests/test_service_launchd.py fail when they are out of date."""

from __future__ import annotations

import sys
from pathlib import Path

from app.system_service import ServiceSpec
from app.system_service.launchd import LABEL, render_plist
from app.system_service.systemd import render_unit

REPO = Path(__file__).resolve().parents[2]
EXECUTABLE = "/usr/local/bin/registry"
MAC_HOME = Path("/Users/USERNAME")

SYSTEMD_HEADER = [
    "# Simple-Registry as a hardened systemd service: what `registry service install --system` writes",
    "# for /usr/local/bin/registry. By hand:",
    "#",
    "#   install -m 0755 dist/registry /usr/local/bin/registry",
    "#   install -D -m 0644 packaging/linux/registry.service /etc/systemd/system/registry.service",
    "#   install -D -m 0644 config.toml /etc/registry/config.toml      # see docs; may be empty",
    "#   systemctl daemon-reload && systemctl enable --now registry",
    "#",
    "# Data lives in /var/lib/registry (StateDirectory; with DynamicUser it is really",
    "# /var/lib/private/registry, reached through a symlink). Environment variables override the",
    "# configuration file: drop the REGISTRY__BLOB_STORE__FS__ROOT_DIR line when config.toml",
    "# configures [blob_store] (install leaves it out then).",
]

PLIST_COMMENT = f"""<!--
  Simple-Registry as a per-user launchd agent: what `registry service install` writes for a user
  agent of /usr/local/bin/registry. By hand:

    install -m 0755 dist/registry /usr/local/bin/registry
    mkdir -p ~/Library/Logs/registry "$HOME/Library/Application Support/registry"
    touch "$HOME/Library/Application Support/registry/config.toml"
    cp packaging/macos/{LABEL}.plist ~/Library/LaunchAgents/
    launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/{LABEL}.plist
    launchctl bootout gui/$(id -u)/{LABEL}     # stop and unload

  launchd expands neither "~" nor "$HOME": replace /Users/USERNAME with your home folder. As a
  system-wide daemon (install with the system scope), the file goes to /Library/LaunchDaemons and is
  bootstrapped into "system". See docs/service.md.
-->
"""


def systemd_unit() -> str:
    spec = ServiceSpec("system", [EXECUTABLE], Path("/etc/registry/config.toml"), Path("/var/lib/registry"))
    return render_unit(spec, header=SYSTEMD_HEADER)


def launchd_agent() -> bytes:
    support = MAC_HOME / "Library" / "Application Support" / "registry"
    spec = ServiceSpec("user", [EXECUTABLE], support / "config.toml", support)
    document = render_plist(spec, MAC_HOME / "Library" / "Logs" / "registry")
    head, plist, rest = document.partition(b"<plist")
    return head + PLIST_COMMENT.encode() + plist + rest


def files() -> dict[Path, bytes]:
    return {
        REPO / "packaging" / "linux" / "registry.service": systemd_unit().encode(),
        REPO / "packaging" / "macos" / f"{LABEL}.plist": launchd_agent(),
    }


if __name__ == "__main__":
    for path, content in files().items():
        path.write_bytes(content)
        print(f"wrote {path}", file=sys.stderr)
