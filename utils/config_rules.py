"""The value rules of a config: small declarative checks (``integer(1)``, ``FRACTION``, ``choice("fail", "skip")``)
and ``check_values``, which applies a ``{dotted key: rule}`` table (``utils.config.RULES``) to a loaded config.

A rule is a test and the words that describe it; a value that fails its rule raises ``ConfigError`` naming the
key, the value and the rule: ``train.batch_size=0: must be an integer >= 1``. Booleans never count as numbers,
nor do NaN and infinities.
"""
import math
from typing import Callable, NamedTuple

from utils.errors import ConfigError


class Rule(NamedTuple):
    test: Callable[[object], bool]
    text: str


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(low):
    """An int (not a bool) >= ``low``."""
    return Rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def number(low=0.0, high=None, strict=False):
    """A number >= ``low`` (> ``low`` with ``strict``), and <= ``high`` where given."""
    if high is not None:
        return Rule(lambda v: _is_number(v) and low <= v <= high, f"a number in [{low:g}, {high:g}]")
    if strict:
        return Rule(lambda v: _is_number(v) and v > low, f"a number > {low:g}")
    return Rule(lambda v: _is_number(v) and v >= low, f"a number >= {low:g}")


def choice(*options):
    """One of the strings ``options``."""
    return Rule(lambda v: isinstance(v, str) and v in options, "one of " + " | ".join(options))


def subset_of(*options):
    """A list of distinct strings, each one of ``options`` (the empty list included)."""
    return Rule(lambda v: isinstance(v, list) and all(isinstance(x, str) and x in options for x in v)
                and len(set(v)) == len(v), "a list of distinct names from " + " | ".join(options))


def optional(rule):
    """``None`` (YAML null) or a value that passes ``rule``."""
    return Rule(lambda v: v is None or rule.test(v), f"null or {rule.text}")


ODD = Rule(lambda v: _is_int(v) and v >= 1 and v % 2 == 1, "an odd integer >= 1")
FRACTION = number(0.0, 1.0)
POSITIVE = number(0.0, strict=True)
NON_NEGATIVE = number(0.0)
TEXT = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
PATHS = Rule(lambda v: isinstance(v, list) and all(isinstance(p, str) and p.strip() for p in v),
             "a list of file paths (non-empty strings)")


def lookup(cfg, key):
    """The value at dotted ``key`` of the nested dict ``cfg``."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_values(cfg, rules):
    """Raise ``ConfigError`` for the first key of ``rules`` whose value in ``cfg`` fails its rule."""
    for key, rule in rules.items():
        value = lookup(cfg, key)
        if not rule.test(value):
            raise ConfigError(f"{key}={value!r}: must be {rule.text}")
