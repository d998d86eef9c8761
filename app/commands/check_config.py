"""`registry check-config`: validate and print the effective configuration, secrets redacted."""

from __future__ import annotations

import json

from app.config import Config, redacted
from app.policy import Authorizer


def run(config: Config) -> int:
    Authorizer(config)  # policies must compile too
    print(json.dumps(redacted(config), indent=2, sort_keys=True))
    return 0
