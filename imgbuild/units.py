"""Sizes as people read them, the way Docker prints them."""


def human_size(size: float) -> str:
    """go-units HumanSize as docker uses it: decimal units, 3 significant digits (``1.04MB``)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.3g}{unit}"
        value /= 1000
    raise AssertionError("unreachable")
