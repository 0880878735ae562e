"""The method table: every compression method is one `Method`, registered once, and looked up by
name wherever a layer, a file, a record or a page needs to know what it stores or how it is shown
(as optimum-quanto registers each quantized module in one table). Torch-free."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from zoo.errors import ZooError
from zoo.methods.layout import VALUE_BITS, dense_bits, stored_tensors

# What a record calls a matrix left as it was (allocation, or no saving possible): not a method.
DENSE = "dense"

Shape = Callable[[int, int, float, float], "tuple[int, int] | None"]


@dataclass(frozen=True, kw_only=True)
class Method:
    """A compression method: its name in configs, records and checkpoints, how it is shown, the
    engine's solver that fits its factors (None: it factorizes nothing and quantizes the dense
    matrix), and the factor shapes that fit a CR under eq. 11.

    `shape(m, n, cr, ks_ratio)` gives (k, s), or None when no factors fit; `max_atoms(m, n)`
    bounds k; `masked` codes keep s values per output and a k x n bitmask, else all k are stored.
    `static`: published with one CR for every matrix, as its own paper does. `alternatives`:
    methods whose form a matrix may take instead, per matrix, with `forms="mixed"`."""

    name: str
    display_name: str
    summary: str
    solver: str | None
    shape: Shape | None = None
    max_atoms: Callable[[int, int], int] | None = None
    masked: bool = False
    static: bool = False
    alternatives: tuple[str, ...] = field(default=())

    @property
    def factorizes(self) -> bool:
        return self.solver is not None

    def width(self, k: int, s: int) -> int:
        """Code values stored per output."""
        return s if self.masked else k

    def bits(self, m: int, n: int, k: int, s: int) -> int:
        """Eq. 11: the 16-bit values it stores plus its mask's bits (unpadded)."""
        if not self.factorizes:
            return dense_bits(m, n)
        values = sum(t.bits for t in stored_tensors(self, m, n, k=k, s=s).values() if t.kind == "values")
        return values + (k * n if self.masked else 0)

    def variants(self) -> dict[str, dict]:
        """The zoo's published kinds of this method, as compression settings."""
        if not self.factorizes:
            return {}
        if self.static:
            return {self.name: {"method": self.name, "static": True}}
        return {
            f"{self.name}-dynamic": {"method": self.name},
            f"{self.name}-static": {"method": self.name, "static": True},
        }


_METHODS: dict[str, Method] = {}
METHODS: Mapping[str, Method] = MappingProxyType(_METHODS)


def register(method: Method) -> Method:
    """Add `method` to the table (a name is registered once), and return it."""
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise ZooError(f"a method named {method.name!r} is already registered")
    if method.name == DENSE:
        raise ZooError(f"{DENSE!r} names a matrix left as it was; pick another method name")
    _METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise ZooError(f"unknown method {name!r}; choose one of {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    return tuple(_METHODS)


def display_name(name: str) -> str:
    """How a page shows `name`: a method published by another version may not be registered here."""
    method = _METHODS.get(name)
    return method.display_name if method else name


def variant_kinds() -> dict[str, dict]:
    return {kind: settings for m in _METHODS.values() for kind, settings in m.variants().items()}


__all__ = ["DENSE", "METHODS", "VALUE_BITS", "Method", "display_name", "get", "names", "register", "variant_kinds"]
