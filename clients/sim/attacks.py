"""Attack profiles that a test, a benchmark or a demo can assign to any simulated client.

Every attack is an :class:`Attack` in the registry :data:`ATTACKS` (name -> instance). An attack
has two hooks, both pure functions of their inputs and an explicit ``numpy`` generator:

- ``poison_data(dataset, rng) -> Dataset``: what the attacker trains on (data poisoning:
  ``label-flip``, ``backdoor``); the identity for the model-poisoning attacks;
- ``craft(own, honest, f, rng, n=None) -> (k, d)``: the malicious update (a *delta*: new local
  weights minus the global weights, flattened with :func:`fedgate.models.train.flatten`) for
  each of the ``k`` rows of ``own``, the benign deltas the attackers computed on their own
  (possibly poisoned) data. ``honest`` is the ``(m, d)`` matrix of the round's honest deltas
  when the attackers are **colluding/omniscient** (they see every honest update of the round,
  the strongest threat model of the papers); when ``honest`` is ``None`` they are
  **non-colluding** and estimate the honest statistics from ``own`` (Baruch et al. and
  Shejwalkar & Houmansadr call this the agnostic / partial-knowledge setting).
  ``transform_update(delta, honest, f, rng, n=None)`` is the one-row form.

``omniscient`` says whether an attack *uses* the honest updates of the round when it is given
them (ALIE, IPM, Min-Max, Min-Sum); the others ignore ``honest``.

ClientApp contract (real runs)
------------------------------
A SuperNode started with ``--node-config "attack='sign-flip'"`` is malicious. The ClientApp:

1. before training, replaces its local training shard by
   ``poison_dataset(attack, train_data, rng)`` (identity for model-poisoning attacks);
2. trains as usual with ``train_local`` and computes ``delta = flatten(new) - flatten(global)``;
3. replaces it by ``apply_attack(attack, delta, rng=rng, f=f, n=n)`` and sends
   ``global + malicious_delta`` (unflattened) back, with its true ``num-examples``.

``rng`` is ``numpy.random.default_rng(seed)`` with a per-node, per-round seed so runs replay.
``f`` (number of attackers) and ``n`` (clients per round) come from the round config when the
integrator provides them (they scale ALIE's ``z`` and the backdoor boost); ``honest`` is only
available in simulations: a single real attacker is non-colluding and its statistics come from
its own delta (see :func:`reference_statistics` for what that degrades to).
Unknown names raise ``ValueError`` listing :data:`ATTACKS`; ``attack='none'`` or ``''`` is benign.

Attacks
-------
``none``        benign.
``label-flip``  trains on ``y -> 9 - y``.
``sign-flip``   sends ``-c * delta`` (``c = 1``).
``gaussian``    sends ``N(0, sigma^2 I)`` noise (``sigma = 0.5`` per coordinate; a benign delta
                of the digits MLP has coordinates of order 1e-2).
``alie``        "A little is enough" (Baruch et al., NeurIPS 2019): ``mu - z * sigma`` per
                coordinate, ``mu``/``sigma`` the mean/std of the honest deltas and
                ``z = Phi^-1((n - s) / n)``, ``s = floor(n / 2 + 1) - f`` (the paper's formula).
``ipm-0.1``,    inner-product manipulation (Xie et al., UAI 2020): ``-eps * mean(honest)``,
``ipm-100``     ``eps = 0.1`` (stays close, flips the inner product under robust rules) and
                ``eps = 100`` (a huge reversed update).
``min-max``,    Shejwalkar & Houmansadr (NDSS 2021), AGR-agnostic form:
``min-sum``     ``m = mu + gamma * p`` with the perturbation ``p = -sigma`` (**inverse
                standard deviation**, coordinate-wise std of the honest deltas; ``"unit"``
                ``-mu/||mu||`` and ``"sign"`` ``-sign(mu)`` are available as ``perturbation``).
                Constraints, with ``g_i`` the honest deltas:
                min-max: ``max_i ||m - g_i|| <= max_{i,j} ||g_i - g_j||``;
                min-sum: ``sum_i ||m - g_i||^2 <= max_i sum_j ||g_i - g_j||^2``.
                The largest ``gamma >= 0`` meeting the constraint is found by bisection (the
                feasible set is an interval containing 0: both sides are convex in ``gamma``
                and ``mu`` lies in the hull of the ``g_i``).
``backdoor``    model replacement (Bagdasaryan et al., AISTATS 2020): trains on its data plus
                a copy of it carrying the trigger (2x2 bright bottom-right corner, see
                :func:`apply_trigger`) relabelled to ``target`` (0), then boosts its delta by
                ``gamma = n / (eta * f)`` (server learning rate ``eta = 1``; the ``f``
                colluders share the replacement) so that the mean lands on the backdoored
                model. :func:`backdoor_success_rate` measures the attack.
``backdoor-bounded``  constrain-and-scale (Bagdasaryan et al.; Sun et al.'s norm-bounded
                attacker): the same poisoned training, the delta scaled to the **median norm
                of the honest deltas** (its own norm when non-colluding), so norm clipping to
                the median leaves it whole and it is as long as a typical honest update.
``backdoor-edge``  edge-case backdoor (Wang et al., NeurIPS 2020): rare inputs no honest
                device holds -- its own non-target images **mirrored left to right**
                (:func:`mirror`) -- relabelled to ``target``, norm-bounded like
                ``backdoor-bounded``; success is measured on mirrored test images.
``alie-adaptive``,  adaptive attackers that know the defence (the AGR-tailored setting of
``min-max-adaptive``,  Shejwalkar & Houmansadr): ALIE / Min-Max / Min-Sum's update
``min-sum-adaptive``  ``mu + s p``, with the scale ``s`` chosen each round, among multiples
                of the paper's (ALIE's ``z_max``, the agnostic ``gamma``), as the one whose
                **defended aggregate** (``craft(..., defence=...)``: what the server's rule
                would apply) lands farthest from the honest mean. Without a ``defence``
                (a real device) they send the agnostic form.
``alie-adaptive-jitter``,  the same, aware of a FoolsGold-style Sybil filter: each
``min-max-adaptive-jitter``  attacker adds its own ``N(0, honest std^2)`` noise per
                coordinate (one draw a round), so that the attackers are as unlike each
                other as honest devices are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

from fedgate.models.data import NUM_CLASSES, Dataset

# ----------------------------------------------------------------------------- helpers

TRIGGER_PIXELS: tuple[int, ...] = (54, 55, 62, 63)  # rows 6-7, columns 6-7 of the 8x8 image
TRIGGER_VALUE = 1.0
BACKDOOR_TARGET = 0


def apply_trigger(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` (``(k, 64)`` in [0, 1]) with the backdoor trigger stamped on."""
    out = np.array(x, dtype=np.float32, copy=True)
    out[:, list(TRIGGER_PIXELS)] = TRIGGER_VALUE
    return out


def mirror(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` (``(k, 64)`` 8x8 images) flipped left to right: the edge-case
    backdoor's rare inputs (no honest device holds a mirrored digit)."""
    arr = np.asarray(x, dtype=np.float32).reshape(-1, 8, 8)
    return np.ascontiguousarray(arr[:, :, ::-1].reshape(-1, 64))


TRIGGERS = {"corner": apply_trigger, "mirror": mirror}
"""How a backdoor marks its inputs: the 2x2 corner patch, or the edge case (mirrored)."""


def triggered(x: np.ndarray, trigger: str = "corner") -> np.ndarray:
    """``x`` carrying ``trigger`` (``corner`` or ``mirror``)."""
    try:
        return TRIGGERS[trigger](x)
    except KeyError:
        raise ValueError(f"unknown trigger {trigger!r}; known: {', '.join(TRIGGERS)}") from None


def backdoor_success_rate(
    predict, data: Dataset, target: int = BACKDOOR_TARGET, trigger: str = "corner"
) -> float:
    """Fraction of ``data``'s non-target examples classified as ``target`` once triggered.

    ``predict`` maps an ``(k, 64)`` float32 array to ``(k,)`` predicted labels (for a torch
    model: ``lambda x: model(torch.from_numpy(x)).argmax(1).numpy()``); ``trigger`` is the
    backdoor's (``corner``; ``mirror`` for the edge-case form).
    """
    keep = data.y != target
    if not np.any(keep):
        raise ValueError("no example with a label other than the backdoor target")
    pred = np.asarray(predict(triggered(data.x[keep], trigger)))
    return float(np.mean(pred == target))


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s ``z_max``: ``s = floor(n/2 + 1) - f``, ``z = Phi^-1((n - s) / n)``."""
    if n < 2 or f < 1:
        return 0.0
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(NormalDist().inv_cdf(p))


def reference_statistics(own: np.ndarray, honest: np.ndarray | None) -> np.ndarray:
    """The benign sample an attack estimates its statistics from.

    Colluding: the round's honest deltas. Non-colluding: the attackers' own benign deltas. With
    a single own delta and nothing else (one real attacker), the sample is ``{delta, 0}``: the
    spread of the honest updates is taken to be of the order of the update itself (a crude,
    documented fallback; the attack is then weaker than its colluding form).
    """
    ref = np.asarray(own if honest is None else honest, dtype=np.float64)
    if ref.ndim == 1:
        ref = ref[None, :]
    if len(ref) == 1:
        ref = np.vstack([ref, np.zeros_like(ref)])
    return ref


def _rows(own: np.ndarray) -> np.ndarray:
    arr = np.asarray(own)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"own must be a (k, d) array of benign deltas, got {arr.shape}")
    return arr


def _infer_n(n: int | None, own: np.ndarray, honest: np.ndarray | None, f: int) -> int:
    if n is not None:
        return int(n)
    if honest is not None:
        return int(len(honest) + max(f, len(own)))
    return max(int(f), 1) * 5  # the usual f/n = 20% when nothing else is known


# ----------------------------------------------------------------------------- attacks


@dataclass(frozen=True)
class Attack:
    """A benign client: trains on its data and sends its delta unchanged.

    Subclasses override :meth:`poison_data` (data poisoning) and/or :meth:`craft`.
    """

    name: str = "none"
    omniscient: bool = False  # uses the round's honest updates when given them
    data_poisoning: bool = False

    def poison_data(self, dataset: Dataset, rng: np.random.Generator) -> Dataset:
        return dataset

    def craft(
        self,
        own: np.ndarray,
        honest: np.ndarray | None,
        f: int,
        rng: np.random.Generator,
        n: int | None = None,
    ) -> np.ndarray:
        """Malicious deltas, one per row of ``own`` (float32, same shape)."""
        return np.asarray(_rows(own), dtype=np.float32).copy()

    def transform_update(
        self,
        delta: np.ndarray,
        honest: np.ndarray | None,
        f: int,
        rng: np.random.Generator,
        n: int | None = None,
    ) -> np.ndarray:
        """One attacker's malicious delta (``delta`` is its own benign delta, 1-D)."""
        delta = np.asarray(delta)
        if delta.ndim != 1:
            raise ValueError(f"delta must be 1-D, got shape {delta.shape}")
        return self.craft(delta[None, :], honest, f, rng, n)[0]


@dataclass(frozen=True)
class LabelFlip(Attack):
    name: str = "label-flip"
    data_poisoning: bool = True

    def poison_data(self, dataset: Dataset, rng: np.random.Generator) -> Dataset:
        return Dataset(dataset.x, (NUM_CLASSES - 1 - dataset.y).astype(np.int64))


@dataclass(frozen=True)
class SignFlip(Attack):
    name: str = "sign-flip"
    scale: float = 1.0

    def craft(self, own, honest, f, rng, n=None):
        return (-self.scale * np.asarray(_rows(own), dtype=np.float64)).astype(np.float32)


@dataclass(frozen=True)
class Gaussian(Attack):
    name: str = "gaussian"
    sigma: float = 0.5

    def craft(self, own, honest, f, rng, n=None):
        own = _rows(own)
        return rng.normal(0.0, self.sigma, size=own.shape).astype(np.float32)


@dataclass(frozen=True)
class ALIE(Attack):
    name: str = "alie"
    omniscient: bool = True
    z: float | None = None  # None: the paper's z_max from (n, f)

    def craft(self, own, honest, f, rng, n=None):
        own = _rows(own)
        ref = reference_statistics(own, honest)
        z = alie_z(_infer_n(n, own, honest, f), f) if self.z is None else self.z
        mal = ref.mean(axis=0) - z * ref.std(axis=0)
        return np.repeat(mal[None, :], len(own), axis=0).astype(np.float32)


@dataclass(frozen=True)
class IPM(Attack):
    name: str = "ipm-0.1"
    omniscient: bool = True
    eps: float = 0.1

    def craft(self, own, honest, f, rng, n=None):
        own = _rows(own)
        ref = np.asarray(own if honest is None else honest, dtype=np.float64)
        mal = -self.eps * ref.mean(axis=0)
        return np.repeat(mal[None, :], len(own), axis=0).astype(np.float32)


def perturbation_vector(ref: np.ndarray, kind: str) -> np.ndarray:
    """Shejwalkar & Houmansadr's perturbations: ``std`` (-sigma), ``unit``, ``sign``."""
    mu = ref.mean(axis=0)
    if kind == "std":
        return -ref.std(axis=0)
    if kind == "unit":
        norm = float(np.linalg.norm(mu))
        return -mu / norm if norm > 0 else np.zeros_like(mu)
    if kind == "sign":
        return -np.sign(mu)
    raise ValueError(f"unknown perturbation {kind!r}; known: std, unit, sign")


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between rows of ``a`` and ``b`` (one Gram product)."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def search_gamma(
    violation, gamma_init: float = 1.0, tol: float = 1e-6, max_iter: int = 200
) -> float:
    """Largest ``gamma >= 0`` with ``violation(gamma) <= 0``, by doubling then bisection.

    ``violation`` must be <= 0 on an interval ``[0, gamma*]`` and > 0 beyond it.
    """
    if violation(0.0) > 0:
        return 0.0
    lo, hi = 0.0, gamma_init
    while violation(hi) <= 0:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return lo
    for _ in range(max_iter):
        if hi - lo <= tol * max(hi, 1e-12):
            break
        mid = 0.5 * (lo + hi)
        if violation(mid) <= 0:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class MinMax(Attack):
    """Min-Max: the malicious update is no farther from any honest one than they are apart."""

    name: str = "min-max"
    omniscient: bool = True
    perturbation: str = "std"

    def _violation(self, ref: np.ndarray, mu: np.ndarray, p: np.ndarray):
        # ||mu + g p - x_i||^2 = c_i + 2 g b_i + g^2 a  (exact quadratic in g)
        diff = mu[None, :] - ref
        a = float(p @ p)
        b = diff @ p
        c = (diff * diff).sum(1)
        bound = float(_sq_dists(ref, ref).max())

        def violation(g: float) -> float:
            return float(np.max(c + 2 * g * b + g * g * a)) - bound

        return violation

    def craft(self, own, honest, f, rng, n=None):
        own = _rows(own)
        ref = reference_statistics(own, honest)
        mu = ref.mean(axis=0)
        p = perturbation_vector(ref, self.perturbation)
        g = 0.0 if not np.any(p) else search_gamma(self._violation(ref, mu, p))
        mal = mu + g * p
        return np.repeat(mal[None, :], len(own), axis=0).astype(np.float32)


@dataclass(frozen=True)
class MinSum(MinMax):
    """Min-Sum: the malicious update's summed squared distance to the honest ones is no larger
    than any honest update's."""

    name: str = "min-sum"

    def _violation(self, ref: np.ndarray, mu: np.ndarray, p: np.ndarray):
        diff = mu[None, :] - ref
        a = float(p @ p) * len(ref)
        b = float((diff @ p).sum())
        c = float((diff * diff).sum())
        bound = float(_sq_dists(ref, ref).sum(1).max())

        def violation(g: float) -> float:
            return c + 2 * g * b + g * g * a - bound

        return violation


@dataclass(frozen=True)
class Backdoor(Attack):
    """A backdoor in one of three forms (see the module doc): ``bound="boost"`` scales the
    delta by ``n / (eta f)`` (model replacement); ``bound="median"`` scales it to the median
    norm of the honest deltas (constrain-and-scale: as large as an honest update may be, so
    norm clipping does not touch it); ``trigger`` is ``corner`` or ``mirror`` (edge case)."""

    name: str = "backdoor"
    data_poisoning: bool = True
    omniscient: bool = False
    target: int = BACKDOOR_TARGET
    boost: float | None = None  # None: n / (eta * f) (model replacement)
    eta: float = 1.0
    trigger: str = "corner"
    bound: str = "boost"  # "boost" | "median"

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {self.trigger!r}; known: {', '.join(TRIGGERS)}")
        if self.bound not in ("boost", "median"):
            raise ValueError(f"unknown bound {self.bound!r}; known: boost, median")

    def poison_data(self, dataset: Dataset, rng: np.random.Generator) -> Dataset:
        keep = dataset.x if self.trigger == "corner" else dataset.x[dataset.y != self.target]
        marked = triggered(keep, self.trigger)
        x = np.concatenate([dataset.x, marked])
        y = np.concatenate([dataset.y, np.full(len(marked), self.target, dtype=np.int64)])
        perm = rng.permutation(len(y))  # interleave clean and triggered examples
        return Dataset(x[perm], y[perm])

    def scale(self, n: int, f: int) -> float:
        if self.boost is not None:
            return float(self.boost)
        return float(n) / (self.eta * max(int(f), 1))

    def craft(self, own, honest, f, rng, n=None):
        own = np.asarray(_rows(own), dtype=np.float64)
        if self.bound == "median":
            ref = own if honest is None else np.asarray(honest, dtype=np.float64)
            target_norm = float(np.median(np.linalg.norm(ref, axis=1)))
            norms = np.linalg.norm(own, axis=1, keepdims=True)
            scale = np.divide(target_norm, norms, out=np.ones_like(norms), where=norms > 0)
            return (scale * own).astype(np.float32)
        s = self.scale(_infer_n(n, own, honest, f), f)
        return (s * own).astype(np.float32)


Defence = Callable[[np.ndarray], np.ndarray]
"""What an adaptive attacker knows: the defended aggregate the server would apply (the
region default's, in its current state) if the attackers sent these ``(k, d)`` rows beside
the round's honest updates."""


def deviation(defence: Defence, mal: np.ndarray, mu: np.ndarray) -> float:
    """How far the defended aggregate lands from the honest mean (the attacker's objective);
    a non-finite aggregate counts as infinitely far."""
    agg = np.asarray(defence(mal), dtype=np.float64)
    dist = float(np.linalg.norm(agg - mu))
    return dist if math.isfinite(dist) else math.inf


@dataclass(frozen=True)
class Adaptive(Attack):
    """An attack whose scale is searched each round against the defence (Shejwalkar &
    Houmansadr's AGR-tailored form, and ALIE with ``z`` searched instead of the paper's
    formula): of the candidate scales (``base`` times ``factors``) it sends the one whose
    *defended* aggregate lands farthest from the honest mean. ``base`` is ALIE's ``z_max`` or
    the agnostic Min-Max/Min-Sum ``gamma``. Without a defence to query (a real device, or a
    simulation that gives none) it is its agnostic form."""

    name: str = "alie-adaptive"
    omniscient: bool = True
    kind: str = "alie"  # "alie" | "min-max" | "min-sum"
    factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
    adaptive: bool = True
    jitter: float = 0.0  # each attacker adds its own N(0, (jitter * honest std)^2) noise

    def _direction(self, own, honest, f, n) -> tuple[np.ndarray, np.ndarray, float]:
        """Honest mean, perturbation and the agnostic scale."""
        ref = reference_statistics(own, honest)
        mu = ref.mean(axis=0)
        if self.kind == "alie":
            z = alie_z(_infer_n(n, own, honest, f), f) or 1.0
            return mu, -ref.std(axis=0), z
        base = MinMax() if self.kind == "min-max" else MinSum()
        p = perturbation_vector(ref, "std")
        g = 0.0 if not np.any(p) else search_gamma(base._violation(ref, mu, p))
        return mu, p, g or 1.0

    def craft(self, own, honest, f, rng, n=None, defence: Defence | None = None):
        own = _rows(own)
        mu, p, scale = self._direction(own, honest, f, n)
        rows = len(own)
        # FoolsGold-aware: rows as unlike each other as honest updates are (one draw a round)
        spread = self.jitter * reference_statistics(own, honest).std(axis=0)
        noise = rng.normal(size=(rows, len(mu))) * spread if self.jitter > 0 else 0.0

        def crafted(s: float) -> np.ndarray:
            return (np.repeat((mu + s * p)[None, :], rows, axis=0) + noise).astype(np.float32)

        if defence is None:
            return crafted(scale)
        best = max(self.factors, key=lambda k: (deviation(defence, crafted(k * scale), mu), -k))
        return crafted(best * scale)


# ----------------------------------------------------------------------------- registry

ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in (
        Attack(),
        LabelFlip(),
        SignFlip(),
        Gaussian(),
        ALIE(),
        IPM(name="ipm-0.1", eps=0.1),
        IPM(name="ipm-100", eps=100.0),
        MinMax(),
        MinSum(),
        Backdoor(),
        Backdoor(name="backdoor-bounded", bound="median", omniscient=True),
        Backdoor(name="backdoor-edge", bound="median", omniscient=True, trigger="mirror"),
        Adaptive(name="alie-adaptive", kind="alie"),
        Adaptive(name="min-max-adaptive", kind="min-max"),
        Adaptive(name="min-sum-adaptive", kind="min-sum"),
        Adaptive(name="alie-adaptive-jitter", kind="alie", jitter=1.0),
        Adaptive(name="min-max-adaptive-jitter", kind="min-max", jitter=1.0),
    )
}

BACKDOORS: dict[str, str] = {
    name: a.trigger for name, a in ATTACKS.items() if isinstance(a, Backdoor)
}
"""Every backdoor form and its trigger (what its success is measured with)."""


def get_attack(name: str | None, **params) -> Attack:
    """The registered attack ``name`` (``None``/``''`` -> ``none``), with overridden params."""
    key = (name or "none").strip().lower()
    try:
        attack = ATTACKS[key]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}") from None
    return replace(attack, **params) if params else attack


def apply_attack(
    name: str | None,
    delta: np.ndarray,
    *,
    rng: np.random.Generator,
    honest: np.ndarray | None = None,
    f: int = 0,
    n: int | None = None,
) -> np.ndarray:
    """The malicious delta a ClientApp sends instead of its benign ``delta`` (1-D float32).

    ``honest`` (colluding simulations only) is the ``(m, d)`` matrix of the round's honest
    deltas; ``f`` the number of attackers (at least this one) and ``n`` the clients per round.
    """
    return get_attack(name).transform_update(delta, honest, max(int(f), 1), rng, n)


def poison_dataset(name: str | None, dataset: Dataset, rng: np.random.Generator) -> Dataset:
    """The training set a ClientApp running attack ``name`` trains on."""
    return get_attack(name).poison_data(dataset, rng)


__all__ = [
    "ATTACKS",
    "BACKDOORS",
    "BACKDOOR_TARGET",
    "TRIGGERS",
    "TRIGGER_PIXELS",
    "Attack",
    "alie_z",
    "apply_attack",
    "apply_trigger",
    "backdoor_success_rate",
    "get_attack",
    "mirror",
    "perturbation_vector",
    "poison_dataset",
    "reference_statistics",
    "search_gamma",
    "triggered",
]
