"""Device profiles: how much a phone or a Raspberry Pi trains per round."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceProfile:
    """Local training budget of one kind of device."""

    name: str
    epochs: int
    batch_size: int
    max_examples: int
    step_delay: float = 0.0  # seconds slept per SGD step to emulate slow hardware


PROFILES: dict[str, DeviceProfile] = {
    "phone": DeviceProfile("phone", epochs=5, batch_size=16, max_examples=400),
    "pi": DeviceProfile("pi", epochs=3, batch_size=32, max_examples=200, step_delay=0.01),
}


def get_profile(name: str, step_delay: float | None = None) -> DeviceProfile:
    """The named profile, optionally with a different per-step delay."""
    try:
        p = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown device profile {name!r}; known: {sorted(PROFILES)}") from None
    if step_delay is not None:
        p = DeviceProfile(p.name, p.epochs, p.batch_size, p.max_examples, step_delay)
    return p
