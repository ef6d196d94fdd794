"""Physical quantities: parsed once from topology files ("500ms", "5%", "50MiB") by pint, and
shown once as people read them (`shown`: the terminal, the report, the markdown a CI step posts).

One unit registry for the whole lab, so a threshold of "2s" compares correctly with a
metric summarised in milliseconds.
"""

import math
import re
from functools import cache

import pint


@cache
def registry() -> pint.UnitRegistry:
    return pint.UnitRegistry()


# A number and a unit ("500ms", "1.5 MB/s", "5%", "1e-3"): pint evaluates whatever arithmetic it is
# given, and "9**9**9 s" would keep it computing for ever.
QUANTITY_TEXT = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*[A-Za-zµ%/ _]*")


def parse(text: str | int | float) -> pint.Quantity:
    """Parse a quantity; bare numbers are dimensionless. Only text and numbers are quantities
    (pint would take a list for an array), only a number with a unit, and only finite ones."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(f"not a quantity: expected text such as 500ms or a number, got {type(text).__name__}")
    if isinstance(text, str) and not QUANTITY_TEXT.fullmatch(text):
        raise ValueError(f"not a quantity: {text[:40]!r}; write a number and a unit, e.g. 500ms or 5%")
    try:
        quantity = registry().Quantity(text)
    except Exception as exc:  # pint's parser raises what its tokenizer and evaluator raise ("(": TokenError)
        raise ValueError(f"not a quantity: {text!r} ({type(exc).__name__}: {exc})") from None
    if not isinstance(quantity, pint.Quantity) or not isinstance(quantity.magnitude, int | float):
        raise ValueError(f"not a quantity: {text!r}")
    if not math.isfinite(quantity.magnitude):
        raise ValueError(f"{text!r}: must be a finite number")
    return quantity


def convert(text: str | int | float, unit: str) -> float:
    """Magnitude of `text` in `unit`; a clear error when the dimensions do not match."""
    quantity = parse(text)
    try:
        return float(quantity.to(unit).magnitude)
    except pint.errors.DimensionalityError:
        raise ValueError(f"{text!r} cannot be expressed in {unit}") from None


def seconds(text: str | int | float) -> float:
    return convert(text, "second")


def fraction(text: str | int | float) -> float:
    """"5%" -> 0.05; a bare number is taken as a fraction already."""
    return convert(text, "dimensionless")


TC_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)bit\s*$", re.IGNORECASE)


def bits_per_second(text: str | int | float) -> float:
    """A rate in bit/s. tc's spellings mean what tc means ("10mbit" is 10 megabit/s, where
    pint would read millibit); anything else goes through pint ("10Mbit/s", "1.5MB/s")."""
    match = TC_RATE.match(str(text))
    if match:
        return float(match.group(1)) * 1000 ** " kmgt".index(match.group(2).lower() or " ")
    return convert(text, "bit/s")


SYMBOL = {"millisecond": "ms", "second": "s", "mebibyte": "MiB", "dimensionless": "", None: ""}


def digits(value: float, significant: int = 3) -> str:
    """`value` with `significant` digits, never in exponent form for everyday magnitudes, and
    whole numbers from 1000 on (2779.0859812999993 -> 2779; 0.0012345 -> 0.00123)."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (significant - 1):
        return f"{value:,.0f}".replace(",", "")
    decimals = significant - 1 - math.floor(math.log10(abs(value)))
    return f"{value:.{max(0, decimals)}f}"


def shown(value: float | None, unit: str | None) -> str:
    """A value and its unit ("1.23 s", "48.6 MiB", "99.5%" for a ratio); "-" for no value."""
    if value is None:
        return "-"
    if unit == "dimensionless":
        return f"{digits(100 * value)}%"
    symbol = SYMBOL.get(unit, unit or "")
    return f"{digits(value)} {symbol}".rstrip()
