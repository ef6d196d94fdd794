"""Physical quantities in topology files ("500ms", "5%", "50MiB"), parsed by pint.

One unit registry for the whole lab, so a threshold of "2s" compares correctly with a
metric summarised in milliseconds.
"""

import re
from functools import cache

import pint


@cache
def registry() -> pint.UnitRegistry:
    return pint.UnitRegistry()


def parse(text: str | int | float) -> pint.Quantity:
    """Parse a quantity; bare numbers are dimensionless."""
    try:
        quantity = registry().Quantity(text)
    except (pint.errors.PintError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a quantity: {text!r} ({exc})") from None
    if not isinstance(quantity, pint.Quantity):
        raise ValueError(f"not a quantity: {text!r}")
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
