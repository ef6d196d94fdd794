"""Values as people read them (lab/quantities.py)."""

from lab.quantities import digits, shown


def test_sensible_digits_and_units() -> None:
    assert shown(2779.0859812999993, "millisecond") == "2779 ms"
    assert shown(57.095656627, "second") == "57.1 s"
    assert shown(0.0012345, "millisecond") == "0.00123 ms"
    assert shown(48.64, "mebibyte") == "48.6 MiB"
    assert shown(0.995, "dimensionless") == "99.5%" and shown(1.0, "dimensionless") == "100%"
    assert shown(None, "second") == "-" and shown(3.0, None) == "3.00"
    assert digits(0) == "0" and digits(-12.345) == "-12.3" and digits(123456.7) == "123457"
