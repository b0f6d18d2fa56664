"""Typed reads of a config.json's keys, each error naming the file and the key. Pure.

A checkpoint's config.json is data a user hands in (a local directory, a hub repo): a count that
is a string, a RoPE setting that is a number, a YaRN factor of zero are refused here, before the
memory model divides by them.
"""

from __future__ import annotations

import math
from typing import Any

from qwdeploy.errors import UnknownModelError

HINT = "fix that value in config.json, or use the checkpoint's published config.json"


class ConfigReader:
    """Reads of one config mapping (config.json, or one of its sub-objects)."""

    def __init__(self, config: dict[str, Any], source: str):
        self.config, self.source = config, source

    def positive(self, key: str, default: int | None = None) -> int:
        """A whole number >= 1; `default` where the key is absent or null (else it is required)."""
        value = self.config.get(key)
        if value is None and default is None:
            raise UnknownModelError(f"{self.source}: config.json lacks {key!r}", hint=HINT)
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UnknownModelError(f"{self.source}: {key} must be a whole number >= 1, not {value!r}", hint=HINT)
        return value

    def count(self, key: str) -> int:
        """A whole number >= 0; absent or null is 0."""
        return 0 if not self.config.get(key) else self.positive(key)

    def mapping(self, key: str) -> dict[str, Any] | None:
        """A JSON object, or None where the key is absent, null or empty."""
        value = self.config.get(key) or None
        if value is not None and not isinstance(value, dict):
            raise UnknownModelError(f"{self.source}: {key} is not a JSON object", hint=HINT)
        return value

    def number(self, key: str) -> float | None:
        """A finite number > 0 as written (1000000 stays an int: it reaches --hf-overrides verbatim),
        or None where the key is absent or null."""
        value = self.config.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UnknownModelError(f"{self.source}: {key} must be a number > 0, not {value!r}", hint=HINT)
        return int(value) if float(value).is_integer() else float(value)

    def rope_scaling(self) -> dict[str, Any] | None:
        """rope_scaling: a JSON object whose factor (a number > 0) and original window (a whole
        number) the context length is computed from; None where absent."""
        rs = self.mapping("rope_scaling")
        if rs is not None:
            inner = ConfigReader(rs, f"{self.source}: rope_scaling")
            inner.number("factor")
            if rs.get("original_max_position_embeddings") is not None:
                inner.positive("original_max_position_embeddings")
        return rs
