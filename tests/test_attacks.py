"""Tests of the attack engine (advprotect.attacks) on tiny seeded models.

Groups: smoke (every attack keeps its invariants and raises its objective), exceptions
(parameter validation) and known values (FGSM step, TI kernel, eps maps, early stop, JND, EOT,
ensemble weights).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advprotect.attacks import (
    ATTACKS,
    CWL2,
    EOT,
    FGSM,
    IFGSM,
    MIFGSM,
    PGD,
    TIFGSM,
    Attack,
    Ensemble,
    budget_map,
    input_diversity,
    jnd_map,
    make_attack,
    parse_robust,
    scaled_sign,
    smooth_gradient,
    ti_kernel,
)
from advprotect.attacks import eot as eot_mod

B, C, H, W = 4, 3, 24, 24
TOL = 1e-6


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add contention (10x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyNet(nn.Module):
    """A small conv net: 10-way classifier or 16-d L2-normalised embedding."""

    def __init__(self, out: int = 10, embed: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, out),
        )
        self.embed = embed

    def forward(self, x):
        y = self.body(x)
        return F.normalize(y, dim=1) if self.embed else y


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(B, C, H // 4, W // 4, generator=g)
    x = F.interpolate(base, size=(H, W), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.rand(B, C, H, W, generator=g)
    x[0, :, :4, :4] = 0.0  # saturated pixels exercise the box projection
    x[1, :, -4:, -4:] = 1.0
    return x.clamp(0, 1)


@pytest.fixture(scope="module")
def classifier() -> nn.Module:
    torch.manual_seed(1)
    return TinyNet().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def embedder() -> nn.Module:
    torch.manual_seed(2)
    return TinyNet(16, embed=True).eval().requires_grad_(False)


def ce_objective(model, x):
    labels = model(x).argmax(1)
    return lambda xa: F.cross_entropy(model(xa), labels, reduction="none")


def dodge_objective(model, x):
    """Distance to the embedding of another 'photo' (x + noise) of the same identity."""
    g = torch.Generator().manual_seed(3)
    enrolled = model((x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1))
    return lambda xa: 1 - (model(xa) * enrolled).sum(1)


OBJECTIVES = {"ce": ce_objective, "dodge": dodge_objective}


def fast(name: str, **kw) -> Attack:
    """Attack with a short schedule for tests."""
    if name == "fgsm":
        return make_attack(name, **kw)
    if name == "cwl2":
        return make_attack(name, steps=kw.pop("steps", 10), c=kw.pop("c", 10.0), **kw)
    return make_attack(name, steps=kw.pop("steps", 5), **kw)


# ------------------------------------------------------------------------------ smoke
@pytest.mark.parametrize("obj_name", sorted(OBJECTIVES))
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_invariants_and_objective_increases(name, obj_name, images, classifier, embedder):
    torch.manual_seed(0)
    model = classifier if obj_name == "ce" else embedder
    objective = OBJECTIVES[obj_name](model, images)
    x = images.clone()
    eps = 8 / 255
    x_adv = fast(name, eps=eps)(x, objective)
    assert torch.equal(x, images), "input tensor was mutated"
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + TOL
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    with torch.no_grad():
        clean, adv = objective(x), objective(x_adv)
    assert adv.mean() > clean.mean()
    assert (adv > clean).sum() >= B - 1


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_make_attack_names_and_defaults(name):
    a = make_attack(name.upper())
    assert isinstance(a, ATTACKS[name])
    assert a.eps == pytest.approx(8 / 255)
    if name not in ("fgsm", "cwl2"):
        assert a.alpha == pytest.approx(2 / 255) and a.steps == 30
    if name in ("mifgsm", "mdifgsm"):
        assert a.decay == 1.0
    if name in ("difgsm", "mdifgsm"):
        assert a.diversity_prob == 0.5
    assert name in repr(a).lower().replace("-", "")


def test_eot_and_diversity_attack_keeps_invariants(images, classifier):
    torch.manual_seed(0)
    objective = ce_objective(classifier, images)
    attack = TIFGSM(steps=3, kernel_size=5, decay=1.0, diversity_prob=1.0,
                    eot="jpeg,resize,blur,noise", eot_samples=2)
    assert attack.eot_samples == 2
    x_adv = attack(images, objective)
    assert (x_adv - images).abs().max().item() <= 8 / 255 + TOL
    assert 0 <= x_adv.min().item() and x_adv.max().item() <= 1
    with torch.no_grad():
        assert objective(x_adv).mean() > objective(images).mean()


def test_callback_init_and_no_grad_context(images, classifier):
    objective = ce_objective(classifier, images)
    calls = []
    universal = torch.full((1, C, H, W), 0.5)  # projected onto the 4/255 ball and [0, 1]
    with torch.no_grad():  # the attack must still get its gradients
        x_adv = IFGSM(eps=4 / 255, steps=3)(
            images, objective, init=universal, callback=lambda i, l: calls.append((i, l.shape))
        )
    assert calls == [(0, (B,)), (1, (B,)), (2, (B,))]
    assert (x_adv - images).abs().max().item() <= 4 / 255 + TOL


def test_ensemble_is_an_objective(images, classifier, embedder):
    ens = Ensemble({"cls": ce_objective(classifier, images), "fr": dodge_objective(embedder, images)},
                   weights="adaptive")
    x_adv = MIFGSM(steps=3)(images, ens)
    assert set(ens.last_losses) == {"cls", "fr"} and ens.last_losses["fr"].shape == (B,)
    with torch.no_grad():
        ens(images)
        clean = dict(ens.last_losses)
        ens(x_adv)
    for name in ("cls", "fr"):  # every member is attacked (the softmin-weighted sum need not grow)
        assert ens.last_losses[name].mean() > clean[name].mean()


def test_cwl2_binary_search_with_success(images, classifier):
    objective = ce_objective(classifier, images)
    labels = classifier(images).argmax(1)
    success = lambda xa: classifier(xa).argmax(1) != labels
    x_adv = CWL2(eps=16 / 255, steps=8, binary_search_steps=3, c=1.0)(images, objective, success=success)
    assert (x_adv - images).abs().max().item() <= 16 / 255 + TOL
    assert 0 <= x_adv.min().item() and x_adv.max().item() <= 1


# ------------------------------------------------------------------------------ exceptions
@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"eps": 0}, "eps"), ({"eps": -0.1}, "eps"), ({"eps": 1.5}, "eps"), ({"eps": math.nan}, "eps"),
        ({"eps": "8"}, "eps"), ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"),
        ({"alpha": 0}, "alpha"), ({"decay": -1}, "decay"), ({"diversity_prob": 1.5}, "diversity_prob"),
        ({"diversity_prob": -0.1}, "diversity_prob"), ({"resize_rate": 0.9}, "resize_rate"),
        ({"kernel_size": 4}, "kernel_size"), ({"sigma": 0}, "sigma"), ({"eot_samples": 0}, "eot_samples"),
        ({"eot": "jpeg,sharpen"}, "sharpen"), ({"step": "adam"}, "step must be one of sign, scaled"),
        ({"step_quantile": 0}, "step_quantile"), ({"step_quantile": 1.5}, "step_quantile"),
    ],
)
def test_attack_parameter_validation(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Attack(**kwargs)


def test_attack_specific_validation():
    with pytest.raises(ValueError, match="unknown attack 'deepfool'.*fgsm.*cwl2"):
        make_attack("deepfool")
    with pytest.raises(ValueError, match="bad arguments"):
        make_attack("fgsm", steps=3)
    with pytest.raises(ValueError, match="c must"):
        CWL2(c=0)
    with pytest.raises(ValueError, match="binary_search_steps"):
        CWL2(binary_search_steps=0)
    with pytest.raises(ValueError, match="diversity_prob"):
        make_attack("difgsm", diversity_prob=2)


def test_call_validation(images, classifier):
    objective = ce_objective(classifier, images)
    a = IFGSM(steps=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        a(images * 2, objective)
    with pytest.raises(ValueError, match="shape"):
        a(images[0], objective)
    with pytest.raises(ValueError, match="eps_map"):
        a(images, objective, eps_map=torch.full((B, C, H + 1, W), 0.01))
    with pytest.raises(ValueError, match="eps_map"):
        a(images, objective, eps_map=torch.full((B, 1, H, W), -0.01))
    with pytest.raises(ValueError, match="per-sample loss"):
        a(images, lambda xa: objective(xa).sum())
    with pytest.raises(ValueError, match="init"):
        a(images, objective, init=torch.zeros(2, C, H, W))
    with pytest.raises(ValueError, match="differentiabl"):
        a(images, lambda xa: objective(xa.detach()))
    # float rounding just outside [0, 1] is tolerated (clipped copy), the input left untouched
    x = images.clone()
    x[0, 0, 0, 0] = 1 + 1e-7
    assert a(x, objective).max().item() <= 1 and x[0, 0, 0, 0].item() > 1


def test_transform_and_budget_validation(images):
    with pytest.raises(ValueError, match="unknown robustness transform 'gamma'.*jpeg"):
        parse_robust("jpeg, gamma")
    with pytest.raises(ValueError, match="at least one"):
        EOT("none")
    with pytest.raises(ValueError, match="quality"):
        eot_mod.RandomJPEG(quality=(95, 50))
    with pytest.raises(ValueError, match="scale"):
        eot_mod.resize(images, 0.0)
    with pytest.raises(ValueError, match="budget mode"):
        budget_map(images, 8 / 255, mode="saliency")
    with pytest.raises(ValueError, match="floor"):
        budget_map(images, 8 / 255, floor=1.5)
    with pytest.raises(ValueError, match="match the loss names"):
        Ensemble({"a": lambda x: x.sum((1, 2, 3))}, weights={"b": 1.0})
    with pytest.raises(ValueError, match="weights"):
        Ensemble({"a": lambda x: x.sum((1, 2, 3))}, weights="greedy")


# ------------------------------------------------------------------------------ known values
def test_fgsm_is_one_sign_step(images, classifier):
    objective = ce_objective(classifier, images)
    eps = 4 / 255
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(x).sum(), x)
    expected = (images + eps * grad.sign()).clamp(0, 1)
    x_adv = FGSM(eps=eps)(images, objective)
    torch.testing.assert_close(x_adv, expected, atol=1e-7, rtol=0)
    # I-FGSM with one step of size eps is FGSM; MI-FGSM without momentum is I-FGSM
    torch.testing.assert_close(IFGSM(eps, eps, 1)(images, objective), expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(
        MIFGSM(eps, 1 / 255, 4, decay=0.0)(images, objective),
        IFGSM(eps, 1 / 255, 4)(images, objective), atol=1e-7, rtol=0,
    )


def test_scaled_sign_known_values():
    g = torch.tensor([[0.0, 1.0, -2.0, 4.0, -8.0]])
    # quantile 0.6 of |g| = 3rd smallest = 2: entries at or above it take a full step
    torch.testing.assert_close(scaled_sign(g, 0.6), torch.tensor([[0.0, 0.5, -1.0, 1.0, -1.0]]))
    torch.testing.assert_close(scaled_sign(g, 1.0), g / 8)  # quantile 1: g / max|g|
    small = scaled_sign(g, 1e-6)  # the smallest entry (0) as scale: every non-zero entry saturates
    torch.testing.assert_close(small, g.sign())
    # per sample, whatever the gradient's scale; the input is not modified
    two = torch.stack([g[0], 1000 * g[0]]).view(2, 1, 1, 5)
    before = two.clone()
    out = scaled_sign(two, 0.6)
    torch.testing.assert_close(out[0], out[1])
    assert torch.equal(two, before)
    with pytest.raises(ValueError, match="quantile"):
        scaled_sign(g, 0.0)


def test_scaled_step_invariants_and_progress(images, classifier):
    objective = ce_objective(classifier, images)
    eps = 8 / 255
    x = images.clone()
    before = objective(images)
    for decay in (0.0, 1.0):
        x_adv = Attack(eps=eps, alpha=2 / 255, steps=5, decay=decay, step="scaled")(x, objective)
        d = (x_adv - x).abs()
        assert d.max().item() <= eps + TOL and x_adv.min().item() >= 0 and x_adv.max().item() <= 1
        assert (objective(x_adv) > before).all()
        # unlike the sign step, most pixels move less than the full budget
        assert (d < eps - 1e-4).float().mean().item() > 0.5
    assert torch.equal(x, images)
    # one step: x + alpha * clamp(grad / q90(|grad|), -1, 1)
    z = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(z).sum(), z)
    one = Attack(eps=eps, alpha=eps, steps=1, step="scaled")(images, objective)
    torch.testing.assert_close(one, (images + eps * scaled_sign(grad, 0.9)).clamp(0, 1), atol=1e-7, rtol=0)


def test_projection_hook_runs_every_step(images, classifier):
    objective = ce_objective(classifier, images)
    calls = []

    def halve(x_adv, x):  # a toy constraint: keep only half of every step's perturbation
        calls.append(1)
        x_adv.sub_(x).mul_(0.5).add_(x)

    eps = 8 / 255
    x_adv = IFGSM(eps, 1 / 255, 6)(images, objective, project=halve)
    assert len(calls) == 6
    # the geometric series 1/2 + 1/4 + ... of one-pixel steps stays below 1/255
    assert (x_adv - images).abs().max().item() < 1 / 255
    with pytest.raises(ValueError, match="cwl2.*no extra projection"):
        CWL2(steps=2)(images, objective, project=halve)


def test_eps_map_respected_per_pixel(images, classifier):
    objective = ce_objective(classifier, images)
    eps_map = torch.zeros(B, 1, H, W)
    eps_map[..., : H // 2, :] = 8 / 255
    eps_map[..., H // 2 :, : W // 2] = 2 / 255
    for attack in (PGD(steps=4), MIFGSM(steps=4), CWL2(steps=6, c=10.0)):
        x_adv = attack(images, objective, eps_map=eps_map)
        d = (x_adv - images).abs()
        assert (d <= eps_map + TOL).all()
        assert d[..., H // 2 :, W // 2 :].max().item() == 0.0
        assert d[..., : H // 2, :].max().item() > (0 if isinstance(attack, CWL2) else 4 / 255)


def test_early_stop_freezes_successful_samples(images, classifier):
    objective = ce_objective(classifier, images)
    done = torch.tensor([True, False, True, False])
    calls = []

    def success(xa):
        calls.append(1)
        return done

    x_adv = MIFGSM(steps=4, early_stop=True)(images, objective, success=success)
    d = (x_adv - images).abs().flatten(1).amax(1)
    assert d[0] == 0 and d[2] == 0 and d[1] > 0 and d[3] > 0
    assert len(calls) == 4
    # all successful: nothing moves and the loop ends at once
    calls.clear()
    x_same = IFGSM(steps=5, early_stop=True)(images, objective, success=lambda xa: torch.ones(B, dtype=torch.bool))
    assert torch.equal(x_same, images)
    # without early_stop the success function is ignored by the iterative attacks
    x_all = IFGSM(steps=2)(images, objective, success=success)
    assert (x_all - images).abs().flatten(1).amax(1).min() > 0


def test_early_stop_freezes_on_the_fly(images, classifier):
    """A sample that succeeds mid-run keeps exactly the perturbation it had then."""
    objective = ce_objective(classifier, images)
    seen = []
    state = {"n": 0}

    def success(xa):
        state["n"] += 1
        seen.append(xa.clone())
        out = torch.zeros(B, dtype=torch.bool)
        out[0] = state["n"] >= 3  # sample 0 "succeeds" at the start of step 3
        return out

    x_adv = IFGSM(steps=6, early_stop=True)(images, objective, success=success)
    torch.testing.assert_close(x_adv[0], seen[2][0], atol=0, rtol=0)
    assert not torch.equal(x_adv[1], seen[2][1])


def test_ti_kernel_and_smoothing():
    k = ti_kernel(7, 1.5)
    assert k.shape == (7, 7)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(k, k.T)
    assert k[3, 3] == k.max()
    assert ti_kernel(1).item() == 1.0
    with pytest.raises(ValueError, match="odd"):
        ti_kernel(6)
    g = torch.ones(1, 3, 16, 16)
    s = smooth_gradient(g, ti_kernel(5))
    torch.testing.assert_close(s[..., 2:-2, 2:-2], g[..., 2:-2, 2:-2])


def test_input_diversity_shape_and_identity():
    x = torch.rand(2, 3, 20, 30)
    assert input_diversity(x, 1.1, 0.0) is x
    torch.manual_seed(0)
    y = input_diversity(x, 1.3, 1.0)
    assert y.shape == x.shape and not torch.equal(x, y)


def test_jnd_flat_vs_textured_and_budget_range():
    g = torch.Generator().manual_seed(0)
    x = torch.full((1, 3, 64, 64), 0.55)
    x[..., 32:, :] = 0.3 + 0.4 * torch.rand(1, 3, 32, 64, generator=g)  # textured bottom half
    j = jnd_map(x)
    assert j.shape == (1, 1, 64, 64)
    assert j.min().item() > 0 and j.max().item() == pytest.approx(1.0)
    assert j[..., 4:24, 4:60].mean() < 0.8 * j[..., 40:60, 4:60].mean()
    # very dark flat areas tolerate more than mid-grey flat areas (luminance adaptation)
    dark = jnd_map(torch.cat([torch.full((1, 3, 32, 32), 0.02), torch.full((1, 3, 32, 32), 0.5)], 3))
    assert dark[..., 8:24, 4:12].mean() > dark[..., 8:24, 52:60].mean()
    eps = 8 / 255
    bm = budget_map(x, eps, floor=0.25)
    assert bm.shape == (1, 1, 64, 64)
    assert bm.min().item() >= 0.25 * eps - 1e-7 and bm.max().item() <= eps + 1e-7
    assert bm[..., 4:24, 4:60].mean() < bm[..., 40:60, 4:60].mean()
    assert torch.equal(budget_map(x, eps, mode="none"), torch.full((1, 1, 64, 64), eps))
    # differentiable
    xr = x.clone().requires_grad_(True)
    jnd_map(xr).sum().backward()
    assert torch.isfinite(xr.grad).all()


def test_parse_robust_normalises():
    assert parse_robust(" JPEG ,resize,,jpeg, none") == ["jpeg", "resize"]
    assert parse_robust("") == [] and parse_robust(None) == []
    e = EOT("jpeg,blur", samples=3, quality=(70, 90))
    assert e.samples == 3 and e.transforms["jpeg"].quality == (70.0, 90.0)


@pytest.mark.parametrize("name", ["jpeg", "resize", "blur", "noise", "identity"])
def test_eot_transforms_shape_range_gradient(name):
    torch.manual_seed(0)
    x = (0.2 + 0.6 * torch.rand(2, 3, 21, 27)).requires_grad_(True)  # not a multiple of 8/16
    y = EOT(name)(x)
    assert y.shape == x.shape and 0 <= y.min().item() and y.max().item() <= 1
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_eot_functional_gradcheck():
    torch.manual_seed(0)
    x = (0.3 + 0.4 * torch.rand(1, 3, 8, 8, dtype=torch.float64)).requires_grad_(True)
    noise = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: eot_mod.resize(t, 0.5), (x,))
    assert torch.autograd.gradcheck(lambda t: eot_mod.blur(t, 0.8), (x,))
    assert torch.autograd.gradcheck(lambda t: eot_mod.gaussian_noise(t, 0.01, noise), (x,))
    # JPEG: kornia's differentiable codec uses a smooth rounding surrogate; gradcheck does not
    # apply, but gradients must be finite and non-zero, also on a grey image
    g = (0.3 + 0.4 * torch.rand(2, 1, 19, 13)).requires_grad_(True)
    y = eot_mod.jpeg(g, 75)
    assert y.shape == g.shape
    y.sum().backward()
    assert torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0


def test_ensemble_weights():
    x = torch.zeros(2, 3, 4, 4)
    easy = lambda t: torch.tensor([3.0, 0.5])
    hard = lambda t: torch.tensor([0.5, 0.5])
    ada = Ensemble({"easy": easy, "hard": hard}, weights="adaptive")
    out = ada(x)
    w_easy, w_hard = ada.last_weights["easy"], ada.last_weights["hard"]
    assert w_easy[0] < w_hard[0]
    assert w_easy[1] == pytest.approx(0.5) and w_hard[1] == pytest.approx(0.5)
    torch.testing.assert_close(w_easy + w_hard, torch.ones(2))
    torch.testing.assert_close(out, w_easy * torch.tensor([3.0, 0.5]) + w_hard * 0.5)
    uni = Ensemble({"easy": easy, "hard": hard})
    torch.testing.assert_close(uni(x), torch.tensor([1.75, 0.5]))
    fixed = Ensemble({"easy": easy, "hard": hard}, weights={"easy": 3, "hard": 1})
    torch.testing.assert_close(fixed(x), torch.tensor([0.75 * 3 + 0.25 * 0.5, 0.5]))
    assert torch.equal(fixed.last_losses["easy"], torch.tensor([3.0, 0.5]))
