"""An explicit energy model per device: watts busy and idle, and energy attributed to requests.

A device draws `busy_w` while a step runs and `idle_w` otherwise, both scaled by the facility's
`pue` (power usage effectiveness: cooling and power delivery on top of the chip). Over a horizon
H with busy time B its energy is

    E(H) = pue * (busy_w * B + idle_w * idle_share * (H - B))

`idle_share` is the fraction of the idle draw charged to this workload: 1 for a dedicated device
(the edge box, a cluster reserved for the service), less for a cloud device whose idle time
other tenants would fill. Every term is configurable; the defaults below are nameplate figures
(stated with their source), not measurements.

Attribution to requests: each step's busy time is split among the requests in it in proportion
to the tokens each had computed in that step (a request's "busy seconds"). A request then gets
  - its busy energy:  pue * busy_w * busy_seconds, and
  - a share of the device's idle energy in proportion to its busy seconds,
so the requests served by a device add up to that device's E(H) exactly (a device that served
nothing keeps its idle energy as unattributed overhead, counted in system totals).
The energy a *decision* changes is the marginal one, pue * (busy_w - idle_w * idle_share) *
busy_seconds: running a step replaces idle draw by busy draw. That is what the bandit observes.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PowerProfile:
    busy_w: float               # draw while a step runs (W)
    idle_w: float               # draw while powered on and idle (W)
    idle_share: float = 1.0     # fraction of the idle draw charged to this workload
    pue: float = 1.0            # facility overhead multiplier (>= 1)

    def __post_init__(self):
        for f in ("busy_w", "idle_w", "idle_share", "pue"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise ValueError(f"power.{f} must be a number, got {v!r}")
        if self.busy_w < 0:
            raise ValueError(f"power.busy_w must be >= 0 watts, got {self.busy_w}")
        if self.idle_w < 0:
            raise ValueError(f"power.idle_w must be >= 0 watts, got {self.idle_w}")
        if self.idle_w > self.busy_w:
            raise ValueError(f"power.idle_w ({self.idle_w} W) must be <= power.busy_w "
                             f"({self.busy_w} W)")
        if not 0 <= self.idle_share <= 1:
            raise ValueError(f"power.idle_share must be in [0, 1], got {self.idle_share}")
        if self.pue < 1:
            raise ValueError(f"power.pue must be >= 1, got {self.pue}")

    def energy_j(self, busy_s: float, horizon_s: float) -> float:
        """E(H) of one device busy for busy_s seconds within horizon_s seconds."""
        if busy_s < 0 or horizon_s < busy_s - 1e-9:
            raise ValueError(f"energy needs 0 <= busy_s <= horizon_s, got busy_s={busy_s}, "
                             f"horizon_s={horizon_s}")
        idle = max(0.0, horizon_s - busy_s)
        return self.pue * (self.busy_w * busy_s + self.idle_w * self.idle_share * idle)

    @property
    def marginal_w(self) -> float:
        """Extra watts a busy second costs over an idle one."""
        return self.pue * (self.busy_w - self.idle_w * self.idle_share)


# Defaults. H100 SXM5: 700 W maximum board power (NVIDIA H100 datasheet); idle ~75 W is a
# round figure from published nvidia-smi readings of idle SXM boards (60-90 W), an assumption.
# Cloud PUE 1.1: Google's reported 2023 fleet-wide trailing PUE is 1.10. Jetson AGX Orin 64GB:
# up to 60 W module power in MAXN (module data sheet); ~10 W idle is an assumption (no
# datasheet figure). Edge PUE 1 (no facility).
POWER_PROFILES = {
    "h100-80gb": PowerProfile(busy_w=700.0, idle_w=75.0, idle_share=1.0, pue=1.1),
    "jetson-agx-orin-64gb": PowerProfile(busy_w=60.0, idle_w=10.0, idle_share=1.0, pue=1.0),
}


def power_profile(name: str, **override) -> PowerProfile:
    """The default profile of a hardware name with fields overridden (None = keep)."""
    if name not in POWER_PROFILES:
        raise ValueError(f"no power profile for hardware {name!r}; known: "
                         f"{sorted(POWER_PROFILES)} (or give busy_w and idle_w)")
    over = {k: v for k, v in override.items() if v is not None}
    return dataclasses.replace(POWER_PROFILES[name], **over)


class EnergyMeter:
    """Busy time of one device and its split among requests, step by step."""

    def __init__(self, power: PowerProfile):
        self.power = power
        self.busy_s = 0.0
        self.request_busy_s: dict[str, float] = {}

    def record_step(self, duration_s: float, tokens: dict[str, int]) -> None:
        """A step of duration_s that computed tokens[rid] tokens for each request rid."""
        if duration_s < 0:
            raise ValueError(f"step duration must be >= 0, got {duration_s}")
        total = sum(tokens.values())
        self.busy_s += duration_s
        if total <= 0:
            return
        per = duration_s / total
        rb = self.request_busy_s
        for rid, n in tokens.items():
            rb[rid] = rb.get(rid, 0.0) + n * per

    def marginal_j(self, rid: str) -> float:
        return self.power.marginal_w * self.request_busy_s.get(rid, 0.0)

    def total_j(self, horizon_s: float) -> float:
        return self.power.energy_j(self.busy_s, horizon_s)

    def attribute(self, horizon_s: float) -> dict[str, float]:
        """Joules per request over horizon_s: busy energy + idle share (sums to total_j when
        the device served anything)."""
        p = self.power
        idle_j = self.total_j(horizon_s) - p.pue * p.busy_w * self.busy_s
        attributed = sum(self.request_busy_s.values())
        out = {}
        for rid, b in self.request_busy_s.items():
            share = b / attributed if attributed > 0 else 0.0
            out[rid] = p.pue * p.busy_w * b + idle_j * share
        return out
