"""course_lib.gptq.core / hessian: GPTQ on one matrix, checked against RTN, an explicit OBS oracle and the loss
identity."""

import math

import pytest
import torch

from course_lib.gptq import HessianAccumulator, gptq_quantize_weight, group_params, inverse_cholesky_upper
from course_lib.gptq import teach
from course_lib.quant import fake_quantize, qrange


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _problem(out_f=32, in_f=128, n=2048, seed=0, dead=()):
    """W and a realistic (correlated, uneven) Hessian H = 2/n X^T X from inputs X (n, in); `dead` inputs are 0."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g)
    mix = 0.3 * torch.randn(in_f, in_f, generator=g)
    X = torch.randn(n, in_f, generator=g) @ mix + torch.randn(in_f, generator=g)
    X = X * torch.rand(in_f, generator=g) * 3  # uneven input scales make act-order matter
    X[:, list(dead)] = 0
    return W, 2 / n * X.T @ X, X


def test_hessian_running_average_equals_batch_formula():
    _, H, X = _problem(n=1000)
    acc = HessianAccumulator(X.shape[1])
    for i in range(0, 1000, 300):  # uneven last batch; 3-D input (batch, seq, in) counts tokens
        chunk = X[i:i + 300]
        acc.add_batch(chunk.reshape(-1, 10, X.shape[1]) if len(chunk) % 10 == 0 else chunk)
    assert acc.n == 1000
    torch.testing.assert_close(acc.H, H, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="expects 128"):
        acc.add_batch(torch.randn(4, 64))
    with pytest.raises(TypeError, match="floating-point"):
        acc.add_batch(torch.ones(4, 128, dtype=torch.long))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order,static_groups", [(False, False), (False, True), (True, True)])
def test_diagonal_hessian_is_exactly_rtn(symmetric, act_order, static_groups):
    """With H diagonal, inputs are uncorrelated: U (Cholesky of H^-1) is diagonal, so the error feedback
    err_j * U[j, k] to other columns is exactly 0 and every column is simply rounded: GPTQ = RTN, bit for bit.
    (Dynamic groups see unchanged weights too; only act-order with dynamic groups would regroup columns.)"""
    W, _, _ = _problem()
    H = torch.diag(torch.rand(128, generator=torch.Generator().manual_seed(1)) + 0.1)
    cases = [(4, 32, dict(granularity="group", group_size=32)), (3, None, dict(granularity="channel"))]
    for bits, group_size, kw in cases:
        res = gptq_quantize_weight(W, H, bits, group_size=group_size, symmetric=symmetric, act_order=act_order,
                                   static_groups=static_groups)
        assert torch.equal(res.qweight_float, fake_quantize(W, bits, symmetric=symmetric, gptq_grid=True, **kw))


@pytest.mark.parametrize("kw", [dict(), dict(act_order=True), dict(act_order=True, static_groups=True),
                                dict(symmetric=False, group_size=None), dict(bits=3, blocksize=48)])
def test_loss_is_the_dampened_quadratic_form(kw):
    """GPTQ's loss sum_j (w_j - q_j)^2 / (2 U_jj^2) equals 1/2 tr((Q - W)(H + lambda I)(Q - W)^T).

    Why: column j is quantized after the earlier errors e_k = (w_k - q_k)/U_kk moved it by -e_k U_kj,
    so W - Q = E U with U upper triangular. Then (W-Q) H' (W-Q)^T = E U H' U^T E^T = E E^T because
    H'^-1 = U^T U. So 1/2 tr(...) = 1/2 ||E||_F^2 = loss. With H = 2/n X^T X this is the mean squared
    output error per token (1/n) sum_t ||(Q - W) x_t||^2 plus lambda/2 ||Q - W||_F^2. Dead input 5 is
    included: W[:, 5] is zeroed and H[5, 5] set to 1 first, and the identity holds for that W and H."""
    kw = dict(kw)
    bits = kw.pop("bits", 4)
    kw.setdefault("group_size", 32)
    W, H, X = _problem(dead=(5,))
    res = gptq_quantize_weight(W, H, bits, **kw)
    W0 = W.clone()
    W0[:, 5] = 0
    Hd = H.clone()
    Hd[5, 5] = 1
    dW = (res.qweight_float - W0).double()
    quad = 0.5 * torch.trace(dW @ (Hd.double() + res.damp * torch.eye(128, dtype=torch.float64)) @ dW.T).item()
    assert res.loss == pytest.approx(quad, rel=1e-4)
    per_token = (dW @ X.double().T).pow(2).sum().item() / X.shape[0]  # (1/n) sum ||dW x||^2
    assert res.loss == pytest.approx(per_token + res.damp / 2 * dW.pow(2).sum().item(), rel=1e-4)
    assert torch.all(res.qweight_float[:, 5] == 0)
    assert res.damp == pytest.approx(0.01 * torch.diag(Hd).mean().item(), rel=1e-6)


def _obs_oracle(W, H, bits, group_size, symmetric, order, damp):
    """Column-by-column OBS with an explicit inverse (no Cholesky, no blocks), float64, fixed group params
    taken from the original W: quantize column j, move every other column by -err * Hinv[j, :] / Hinv[j, j],
    then eliminate j from Hinv (Gaussian elimination = the inverse of H without row/column j)."""
    W = W.double().clone()
    Hinv = torch.linalg.inv(H.double() + damp * torch.eye(H.shape[0], dtype=torch.float64))
    qmin, qmax = qrange(bits, symmetric)
    params = [group_params(W[:, k:k + group_size].float(), bits, symmetric) for k in range(0, W.shape[1], group_size)]
    for j in order:
        s, z = (t.double()[:, 0] for t in params[j // group_size])
        q = s * (torch.clamp(torch.round(W[:, j] / s) + z, qmin, qmax) - z)
        err = (W[:, j] - q) / Hinv[j, j]
        W -= err[:, None] * Hinv[j][None, :]
        W[:, j] = q
        Hinv -= Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]
    return W


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_matches_explicit_obs_oracle(act_order, symmetric):
    """The Cholesky/lazy-block algorithm computes the same Q as textbook sequential OBS (static groups)."""
    W, H, _ = _problem(out_f=16, in_f=64, n=512, seed=3)
    res = gptq_quantize_weight(W, H, 4, group_size=16, static_groups=True, act_order=act_order, blocksize=24,
                               symmetric=symmetric)
    order = res.perm.tolist() if act_order else range(64)
    Q = _obs_oracle(W, H, 4, 16, symmetric, order, res.damp)
    same = (res.qweight_float.double() - Q).abs() < 1e-4
    # On GPTQ's symmetric grid a group's largest weight sits exactly on a rounding tie (w/s = +-(qmax + 1/2)),
    # which float32 and float64 may break differently; the row then follows another (equally valid) path.
    assert same.all(dim=1).sum() >= 15 and same.float().mean() > 0.97
    assert teach.quadratic_loss(res.qweight_float - W, H) == pytest.approx(teach.quadratic_loss(Q - W, H), rel=0.05)


def test_gptq_beats_rtn_on_correlated_inputs():
    W, H, X = _problem()
    for bits in (4, 3):
        res = gptq_quantize_weight(W, H, bits, group_size=32)
        rtn = fake_quantize(W, bits, granularity="group", group_size=32, gptq_grid=True)
        gptq_err, rtn_err = ((res.qweight_float - W) @ X.T).norm().item(), ((rtn - W) @ X.T).norm().item()
        assert gptq_err < 0.9 * rtn_err, (bits, gptq_err, rtn_err)


def test_blocksize_does_not_change_the_result():
    """Lazy batching is only a reordering of the same updates, also when a dynamic group straddles two blocks
    (group 32, block 48): its scale is fitted to the columns with the pending updates included."""
    W, H, _ = _problem()
    a = gptq_quantize_weight(W, H, 4, group_size=32, blocksize=128)
    for blocksize in (48, 7):
        b = gptq_quantize_weight(W, H, 4, group_size=32, blocksize=blocksize)
        assert (a.codes == b.codes).float().mean() > 0.995
        assert b.loss == pytest.approx(a.loss, rel=1e-3)


def test_act_order_permutation_round_trips():
    W, H, _ = _problem()
    g = 32
    res = gptq_quantize_weight(W, H, 4, group_size=g, act_order=True)
    perm = res.perm
    assert sorted(perm.tolist()) == list(range(128))
    assert torch.all(torch.diag(H)[perm].diff() <= 0)  # descending diag(H)
    # dynamic groups: column perm[j] belongs to group j // g of the processing order
    assert torch.equal(res.g_idx[perm].long(), torch.arange(128) // g)
    # un-permuting: equals quantizing the permuted problem in natural order, then moving columns back
    plain = gptq_quantize_weight(W[:, perm], H[perm][:, perm], 4, group_size=g)
    assert (plain.codes == res.codes[:, perm]).float().mean() > 0.995
    torch.testing.assert_close(plain.scales, res.scales, rtol=1e-4, atol=1e-6)
    # every stored code dequantizes to Q through g_idx
    idx = res.g_idx.long()
    torch.testing.assert_close(res.scales[:, idx] * (res.codes.float() - res.zeros[:, idx]), res.qweight_float,
                               rtol=0, atol=0)
    # static groups: g_idx stays column // g and the scales are RTN's, from the original W
    st = gptq_quantize_weight(W, H, 4, group_size=g, act_order=True, static_groups=True)
    assert torch.equal(st.g_idx.long(), torch.arange(128) // g)
    rtn_scale, _ = group_params(W.reshape(32, 4, g), 4, True)
    assert torch.equal(st.scales, rtn_scale[..., 0])


def test_asymmetric_codes_and_float16_scales():
    W, H, _ = _problem()
    res = gptq_quantize_weight(W, H, 4, group_size=32, symmetric=False, scale_dtype=torch.float16)
    assert res.codes.dtype == torch.uint8 and int(res.codes.max()) <= 15
    assert torch.equal(res.scales, res.scales.half().float())  # representable in a GPTQ checkpoint
    assert torch.all((res.zeros >= 0) & (res.zeros <= 15) & (res.zeros == res.zeros.round()))
    sym = gptq_quantize_weight(W, H, 4, group_size=32)
    assert sym.codes.dtype == torch.int8 and int(sym.codes.min()) >= -8 and torch.all(sym.zeros == 0)


def test_dampening_is_raised_with_a_warning_then_fails_clearly():
    # eigenvalues 2.05 and -0.05: percdamp 0.01 is not enough, 0.1 is
    H = torch.tensor([[1.0, 1.05], [1.05, 1.0]])
    with pytest.warns(RuntimeWarning, match=r"GPTQ my\.layer.*percdamp=0\.1"):
        U, damp = inverse_cholesky_upper(H, 0.01, name="my.layer")
    assert damp == pytest.approx(0.1)
    torch.testing.assert_close(U.T @ U, torch.linalg.inv(H + 0.1 * torch.eye(2)))
    with pytest.warns(RuntimeWarning):
        with pytest.raises(ValueError, match="stays singular"):
            gptq_quantize_weight(torch.randn(4, 2), torch.tensor([[1.0, 100.0], [100.0, 1.0]]), 4, group_size=None,
                                 name="bad.layer")
    with pytest.raises(ValueError, match="NaN"):
        inverse_cholesky_upper(torch.full((2, 2), math.nan))


def test_argument_errors():
    W, H, _ = _problem()
    with pytest.raises(ValueError, match="group_size 48 does not divide in_features 128"):
        gptq_quantize_weight(W, H, 4, group_size=48)
    with pytest.raises(ValueError, match="bits must be from 2 to 8"):
        gptq_quantize_weight(W, H, 9)
    with pytest.raises(ValueError, match=r"H must be \(128, 128\)"):
        gptq_quantize_weight(W, H[:64, :64], 4)
    with pytest.raises(TypeError, match="2-D floating-point"):
        gptq_quantize_weight(W.long(), H, 4)
    with pytest.raises(ValueError, match="blocksize"):
        gptq_quantize_weight(W, H, 4, blocksize=0)
    with pytest.raises(ValueError, match="percdamp"):
        gptq_quantize_weight(W, H, 4, percdamp=-1)
    assert gptq_quantize_weight(W, H, 4, group_size=-1).group_size is None  # -1 and None mean per-channel


def test_restricted_grid_gptq_uses_chapter_02s_grid():
    """restricted=True: the same algorithm on the restricted symmetric grid [-(2^(b-1)-1), 2^(b-1)-1] with
    s = max|w| / qmax. With a diagonal H it is exactly chapter 02's RTN; with a real H it beats that RTN."""
    W, H, _ = _problem()
    D = torch.diag(torch.diag(H))
    cases = [(4, 32, dict(granularity="group", group_size=32)), (3, None, dict(granularity="channel"))]
    for bits, group_size, kw in cases:
        res = gptq_quantize_weight(W, D, bits, group_size=group_size, restricted=True)
        assert torch.equal(res.qweight_float, fake_quantize(W, bits, restricted=True, **kw))
        codes = gptq_quantize_weight(W, H, bits, group_size=group_size, restricted=True).codes
        assert int(codes.min()) >= -(2 ** (bits - 1) - 1) and int(codes.max()) <= 2 ** (bits - 1) - 1
    rtn = fake_quantize(W, 3, restricted=True, granularity="group", group_size=32)
    gptq = gptq_quantize_weight(W, H, 3, group_size=32, restricted=True).qweight_float
    assert teach.quadratic_loss(gptq - W, H) < 0.8 * teach.quadratic_loss(rtn - W, H)
    with pytest.raises(ValueError, match="symmetric"):
        gptq_quantize_weight(W, H, 4, symmetric=False, restricted=True)
