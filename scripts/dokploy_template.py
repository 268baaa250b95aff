"""Write (or with --check, compare) the Dokploy template's compose file, made from
docker-compose.dokploy.yml so the two cannot drift: the released credsync image instead of a
build from source, and `expose` instead of host ports, as Dokploy's templates have them.

    python3 scripts/dokploy_template.py [--check]"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "docker-compose.dokploy.yml"
TEMPLATE = REPO / "dokploy" / "claude-hub-credsync" / "docker-compose.yml"
HEADER = (
    "# Made from docker-compose.dokploy.yml by scripts/dokploy_template.py: edit that file, then run\n"
    "# the script. The released credsync image (CREDSYNC_IMAGE, pinned in template.toml) replaces the\n"
    "# build from source; the webhook is exposed to Dokploy's proxy, not published on a host port.\n"
)
IMAGE = "${CREDSYNC_IMAGE:?set CREDSYNC_IMAGE to a released credsync image, e.g. ghcr.io/OWNER/credsync:X.Y.Z}"


def template(source: dict[str, Any]) -> dict[str, Any]:
    made = dict(source)
    services = {name: dict(service) for name, service in source["services"].items()}
    credsync = services["credsync"]
    del credsync["build"]
    credsync["image"] = IMAGE
    webhook = services["webhook"]
    webhook["expose"] = webhook.pop("ports")
    made["services"] = services
    return made


def rendered() -> str:
    return HEADER + yaml.safe_dump(template(yaml.safe_load(SOURCE.read_text())), sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        if TEMPLATE.read_text() != rendered():
            print(f"{TEMPLATE.relative_to(REPO)} is stale: run python3 scripts/dokploy_template.py", file=sys.stderr)
            return 1
        return 0
    TEMPLATE.write_text(rendered())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
