"""Reference solutions for chapter 11's exercises (kept out of the notebooks).

Plain torch, written from scratch: course_lib.gptq (QuantLinear, unpack_rows) is what the checks compare against,
so it is not used here.
"""

import torch


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    k, n = 8 * qweight.shape[0], qweight.shape[1]
    W = torch.empty(k, n, dtype=torch.float32)
    for j in range(8):
        # Input rows 8r + j sit at bits 4j .. 4j+3 of word r (low nibble first): shift them down, keep 4 bits.
        # The mask matters: a word with a top nibble >= 8 is negative, and >> then fills with 1s.
        u = (qweight >> (4 * j)) & 0xF  # (k/8, n), codes in [0, 15]
        rows = torch.arange(j, k, 8)  # the input rows 8r + j
        g = rows // group_size  # their groups
        W[rows] = scales[g].float() * (u - zeros[g]).float()  # float32 before multiplying (scales is float16)
    return W


def packed_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                  group_size: int) -> torch.Tensor:
    m, k = x.shape
    n = qweight.shape[1]
    y = torch.zeros(m, n, dtype=torch.float32)
    shifts = 4 * torch.arange(8, dtype=torch.int32)  # nibble j at bits 4j
    for gi in range(k // group_size):
        # This group's inputs, and its packed rows (8 inputs per word).
        x_g = x[:, gi * group_size:(gi + 1) * group_size]  # (m, g)
        words = qweight[gi * group_size // 8:(gi + 1) * group_size // 8]  # (g/8, n)
        # Unpack only this group's codes: (g/8, 8, n) -> (g, n), row 8r + j from bits 4j of word r.
        u_g = ((words[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(group_size, n).float()
        s_g, z_g = scales[gi].float(), zeros[gi].float()  # (n,): constant over the group's inputs
        # sum_i x_i s (u_i - z) = s (sum_i x_i u_i) - s z (sum_i x_i): scale and zero point leave the inner sum.
        y += (x_g @ u_g) * s_g - x_g.sum(dim=1, keepdim=True) * z_g * s_g
    return y
