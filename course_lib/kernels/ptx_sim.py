"""A tiny interpreter of the PTX instructions that the half2 kernel's inline asm uses (``w4a16_h2``), so that the asm
strings can be checked on a CPU: Triton's interpreter cannot run inline asm, and without a GPU nothing else can.

    codes_seen(DOT8_F16, word, z)      # the eight values u_j - z the asm multiplies, in row order
    dot8(DOT8_F16, word, x8, z)        # what one asm block returns: sum_j x_j (u_j - z), rounded as the GPU does

Registers hold 32-bit patterns; half2 instructions compute each lane exactly and round once to fp16, as the
hardware does. Only the instructions the kernel uses are known; any other raises.
"""

from __future__ import annotations

import re

import numpy as np

from . import w4a16_h2 as H


def f16_value(bits: int) -> float:
    return float(np.array([bits & 0xFFFF], dtype=np.uint16).view(np.float16)[0])


def _bits16(v: float) -> int:
    return int(np.array([v], dtype=np.float16).view(np.uint16)[0])


def _f32(bits: int) -> np.float32:
    return np.array([bits & 0xFFFFFFFF], dtype=np.uint32).view(np.float32)[0]


def _bits32(v) -> int:
    return int(np.array([v], dtype=np.float32).view(np.uint32)[0])


def halves(v: int) -> tuple[int, int]:
    return v & 0xFFFF, (v >> 16) & 0xFFFF


def lop3(a: int, b: int, c: int, lut: int) -> int:
    """lop3.b32: bit k of the result is bit (a_k b_k c_k read as a 3-bit number) of the table `lut`."""
    out = 0
    for idx in range(8):
        if (lut >> idx) & 1:
            out |= (a if idx & 4 else ~a) & (b if idx & 2 else ~b) & (c if idx & 1 else ~c)
    return out & 0xFFFFFFFF


def _prmt(a: int, b: int, sel: int) -> int:
    """prmt.b32 (default mode): result byte k is byte sel[k] of the eight bytes of {b, a}."""
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    return sum(src[(sel >> (4 * k)) & 7] << (8 * k) for k in range(4))


def _h2(a: int, b: int, c: int, op: str) -> int:
    """A half2 instruction: each lane computed exactly (float64) and rounded once to fp16."""
    lanes = []
    for la, lb, lc in zip(halves(a), halves(b), halves(c)):
        fa, fb, fc = f16_value(la), f16_value(lb), f16_value(lc)
        lanes.append(_bits16({"sub": fa - fb, "mul": fa * fb, "fma": fa * fb + fc}[op]))
    return lanes[0] | (lanes[1] << 16)


def run_ptx(asm: str, inputs: list[int], outputs: int = 1):
    """Run an asm block of the instructions the kernel uses. Operands $0 .. $(outputs - 1) are its outputs (they
    may be read after being written), the inputs follow as $outputs, ...; returns $0's bits, or a tuple of all
    outputs when there are several."""
    regs: dict[str, int] = {f"${n}": 0 for n in range(outputs)}
    written: set[str] = set()

    def val(tok: str) -> int:
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        if tok.startswith("$"):
            return inputs[int(tok[1:]) - outputs] & 0xFFFFFFFF
        try:
            return int(tok, 0)
        except ValueError:
            raise ValueError(f"{tok!r} is neither a declared register, an operand $n nor a number.") from None

    for line in (part.strip().strip("{}").strip() for part in asm.replace("\n", ";").split(";")):
        if not line:
            continue
        if line.startswith(".reg"):
            regs.update({name.strip(): 0 for name in line.split(None, 2)[2].split(",")})
            continue
        parsed = re.match(r"^([a-z0-9.]+)\s+(.*)$", line)
        if parsed is None:
            raise ValueError(f"Cannot read the PTX line {line!r}.")
        op, rest = parsed.groups()
        if op == "mov.b32" and rest.startswith("{"):  # mov.b32 {lo, hi}, src
            names, src = rest[1:].split("}")
            lo, hi = (t.strip() for t in names.split(","))
            regs[lo], regs[hi] = halves(val(src.strip().lstrip(",")))
            continue
        dst, *args = (t.strip() for t in rest.split(","))
        a = [val(t) for t in args]
        known = {"shr.u32": lambda: a[0] >> a[1], "lop3.b32": lambda: lop3(*a), "prmt.b32": lambda: _prmt(*a),
                 "mov.b32": lambda: a[0], "sub.rn.f16x2": lambda: _h2(a[0], a[1], 0, "sub"),
                 "mul.rn.f16x2": lambda: _h2(a[0], a[1], 0, "mul"), "fma.rn.f16x2": lambda: _h2(*a, "fma"),
                 "add.rn.f16": lambda: _bits16(f16_value(a[0]) + f16_value(a[1])),
                 "cvt.f32.f16": lambda: _bits32(np.float32(f16_value(a[0]))),
                 "add.rn.f32": lambda: _bits32(_f32(a[0]) + _f32(a[1]))}
        if op not in known:
            raise ValueError(f"The instruction {op!r} is not simulated (known: {', '.join(known)}).")
        if dst not in regs:
            raise ValueError(f"The register {dst!r} is written but was never declared with .reg.")
        regs[dst] = known[op]() & 0xFFFFFFFF
        written.add(dst)
    missing = [f"${n}" for n in range(outputs) if f"${n}" not in written]
    if missing:
        raise ValueError(f"The asm block never wrote its output(s) {', '.join(missing)}.")
    return regs["$0"] if outputs == 1 else tuple(regs[f"${n}"] for n in range(outputs))


def x_pairs(x8) -> list[int]:
    """The four half2 pairs (x_j, x_{j+4}) of 8 fp16 activations, built as the kernel builds them."""
    w = [int(v) for v in np.asarray(x8, dtype=np.float16).view(np.uint32)]  # (x_{2m}, x_{2m+1})
    sel = [int(s.split(",")[-1].strip(" ;"), 0) for s in (H.PRMT_LO, H.PRMT_HI)]
    return [_prmt(w[0], w[2], sel[0]), _prmt(w[0], w[2], sel[1]), _prmt(w[1], w[3], sel[0]), _prmt(w[1], w[3], sel[1])]


def dot8(asm: str, q: int, x8, z: int) -> float:
    """What one asm block returns for word q, 8 activations x8 (rows 8i..8i+7) and zero point z."""
    return float(_f32(run_ptx(asm, [q & 0xFFFFFFFF, *x_pairs(x8), *H.magic_constants(z)])))


def dot8_two_step(dot4: str, q: int, x8, z: int) -> float:
    """The 2-4 token kernel's way: CONVERT4 once per word, then one DOT4 block (fp16 or fp32 sums) per token."""
    converted = run_ptx(H.CONVERT4, [q & 0xFFFFFFFF, *H.magic_constants(z)], outputs=4)
    return float(_f32(run_ptx(dot4, [*converted, *x_pairs(x8)])))


def codes_seen(asm: str, q: int, z: int) -> list[float]:
    """The eight values u_j - z the asm multiplies, read back with one-hot activations. `asm` is a one-step block
    (DOT8_*) or a DOT4_* block, which is then run after CONVERT4."""
    if asm in (H.DOT4_F16, H.DOT4_F32):
        return [dot8_two_step(asm, q, np.eye(8)[j], z) for j in range(8)]
    return [dot8(asm, q, np.eye(8)[j], z) for j in range(8)]
