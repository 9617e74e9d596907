"""The `report` config section: the schema's defaults (workflow/schemas/config.schema.yaml) filled in, and checks."""

from __future__ import annotations

import json

from ..config import schema_defaults
from ..errors import InputError


def report_settings(cfg: dict | str | None) -> dict:
    """The report section (dict or JSON text) with defaults filled in; unknown keys are an error."""
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except json.JSONDecodeError as error:
            raise InputError(f"not JSON: {error}", where="--config", expected="the report config section") from None
    cfg = dict(cfg or {})
    defaults = schema_defaults("report")
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)}", where="config report",
                         expected=f"keys among {', '.join(defaults)}")
    out = {}
    for key, default in defaults.items():
        value = cfg.get(key, default)
        if isinstance(default, dict):
            value = dict(value or {})
            extra = sorted(set(value) - set(default))
            if extra:
                raise InputError(f"unknown key(s) {', '.join(extra)}", where=f"config report.{key}",
                                 expected=f"keys among {', '.join(default)}")
            value = {**default, **value}
        out[key] = value
    return out
