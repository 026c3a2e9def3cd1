"""The bit explorer: toggle the bits of a number format and read the value.

``explain_bits`` is the pure, tested function; ``bit_explorer`` wraps it in ipywidgets
(a format dropdown and one toggle per bit). Notebooks show a static call of the first and
display the second in a cell that the tests skip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import CodebookFormat, FloatFormat, Format, IntFormat, get_format
from ..core.tables import fmt as _fmt

EXPLORER_FORMATS = ("fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fnuz", "fp8_e5m2fnuz", "fp4_e2m1", "fp16", "bf16", "fp32",
                    "int8", "int4", "nf4")


@dataclass(frozen=True)
class BitsExplained:
    """A bit pattern read in one format: its code, value, named fields and a one-line derivation."""

    format: str
    bits: tuple[int, ...]
    code: int
    value: float
    fields: dict[str, str]  # field name -> its bits as a string, most significant first
    kind: str  # "normal", "subnormal", "zero", "inf", "nan", "integer" or "table"
    text: str


def _num(x: float) -> str:
    return _fmt(x, 6)


def _float_text(f: FloatFormat, code: int) -> tuple[str, str]:
    s, E, M = f.fields(code)
    value = f.decode(code)
    m = f.man_bits
    sign = "-" if s else "+"
    if math.isnan(value):
        why = {"ieee": "the top exponent with a non-zero mantissa is NaN",
               "fn": "all exponent and mantissa bits set is the only NaN (this format has no infinity)",
               "fnuz": "the would-be -0 pattern is the only NaN (no -0, no infinity)"}[f.special]
        return "nan", f"NaN: {why}."
    if math.isinf(value):
        return "inf", f"{sign}inf: top exponent field with mantissa 0."
    if E == 0:
        kind = "zero" if M == 0 else "subnormal"
        if M == 0:
            return kind, f"{sign}0: exponent and mantissa fields all zero."
        return kind, (f"subnormal (exponent field 0): {sign}2^(1-{f.bias}) x {M}/{1 << m} = {_num(value)}")
    return "normal", (f"normal: {sign}2^({E}-{f.bias}) x (1 + {M}/{1 << m}) = {sign}2^{E - f.bias} x "
                      f"{_num(1 + M / (1 << m))} = {_num(value)}")


def explain_bits(bits: Sequence[int], fmt: str | Format) -> BitsExplained:
    """Read `bits` (0/1 values, most significant first, sign bit first) in `fmt`."""
    f = get_format(fmt)
    bits = tuple(bits)
    if len(bits) != f.bits:
        raise ValueError(f"{f.name} has {f.bits} bits; got {len(bits)}. Give one 0/1 per bit, sign bit first.")
    if any(isinstance(b, float) or b not in (0, 1) for b in bits):
        raise ValueError(f"Bits must be 0 or 1; got {list(bits)}.")
    bits = tuple(int(b) for b in bits)  # True/False and numpy integers become plain 0/1
    code = int("".join(map(str, bits)), 2)
    text_bits = "".join(map(str, bits))
    value = f.decode(code)
    if isinstance(f, FloatFormat):
        e = f.exp_bits
        fields = {"sign": text_bits[0], "exponent": text_bits[1:1 + e], "mantissa": text_bits[1 + e:]}
        kind, text = _float_text(f, code)
    elif isinstance(f, IntFormat):
        terms = [f"{'-' if i == 0 else ''}{1 << (f.bits - 1 - i)}" for i, b in enumerate(bits) if b]
        fields = {"sign": text_bits[0], "magnitude": text_bits[1:]}
        kind, text = "integer", f"two's complement: {' + '.join(terms) or '0'} = {int(value)}"
    else:
        assert isinstance(f, CodebookFormat)
        fields = {"index": text_bits}
        kind, text = "table", f"index {code} of the {f.name.upper()} table of {len(f.values)} values = {_num(value)}"
    return BitsExplained(f.name, bits, code, value, fields, kind, text)


def bits_of(code: int, fmt: str | Format) -> list[int]:
    """The bits (most significant first) of `code` in `fmt`: the inverse of explain_bits' reading."""
    f = get_format(fmt)
    if not 0 <= code < 1 << f.bits:
        raise ValueError(f"{f.name} codes lie in 0..{(1 << f.bits) - 1}; got {code}.")
    return [(code >> (f.bits - 1 - i)) & 1 for i in range(f.bits)]


def _field_of_bit(f: Format, i: int) -> str:
    if isinstance(f, FloatFormat):
        return "sign" if i == 0 else "exponent" if i <= f.exp_bits else "mantissa"
    return "sign" if isinstance(f, IntFormat) and i == 0 else "value"


_COLORS = {"sign": "#CC79A7", "exponent": "#0072B2", "mantissa": "#009E73", "value": "#E69F00"}


def _html(ex: BitsExplained) -> str:
    fields = "  ".join(f"<b>{k}</b> {v}" for k, v in ex.fields.items())
    return (f"<div style='font-family:monospace'>{fields}<br>code {ex.code} (0x{ex.code:0{(len(ex.bits) + 3) // 4}X})"
            f"<br><b>value {_num(ex.value)}</b><br>{ex.text}</div>")


def bit_explorer(fmt: str = "fp8_e4m3fn", code: int = 0b00111000):
    """An ipywidgets panel: pick a format, toggle its bits, read the value and how it is derived."""
    import ipywidgets as w

    dropdown = w.Dropdown(options=list(EXPLORER_FORMATS), value=get_format(fmt).name, description="format")
    toggles_box = w.HBox()
    out = w.HTML()

    def current_bits() -> list[int]:
        return [int(t.value) for t in toggles_box.children]

    def refresh(*_):
        out.value = _html(explain_bits(current_bits(), dropdown.value))

    def build(name: str, start: int) -> None:
        f = get_format(name)
        start = start if start < 1 << f.bits else 0
        toggles = []
        for i, b in enumerate(bits_of(start, f)):
            field = _field_of_bit(f, i)
            t = w.ToggleButton(value=bool(b), description=str(b), tooltip=field,
                               layout=w.Layout(width="30px", padding="0px"))
            t.style.button_color = _COLORS[field]
            t.observe(lambda ch, t=t: (setattr(t, "description", str(int(ch["new"]))), refresh()), names="value")
            toggles.append(t)
        toggles_box.children = toggles
        refresh()

    dropdown.observe(lambda ch: build(ch["new"], 0), names="value")
    build(dropdown.value, code)
    legend = w.HTML(" ".join(f"<span style='color:{c}'>■ {k}</span>" for k, c in _COLORS.items()))
    return w.VBox([dropdown, toggles_box, legend, out])
