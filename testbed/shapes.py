"""Inside/outside tests for every shape of the synthetic world.

Each shape is a function ``(u, v) -> bool tensor`` over *local* coordinates: the object is centred
at the origin, upright, and spans roughly [-1, 1] in both axes. The renderer maps pixel
coordinates into this frame (translation, rotation, scale) so a shape function never has to know
about pose; this keeps every class a few tensor ops and the whole batch vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Tensor = torch.Tensor
ShapeFn = Callable[[Tensor, Tensor], Tensor]

TWO_PI = 2.0 * math.pi


def _polar(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    # Angle measured from the +v axis so that polygons/stars have a vertex pointing "up".
    return torch.sqrt(u * u + v * v), torch.remainder(torch.atan2(u, v), TWO_PI)


def radial_polygon(radii: list[float], scale: float = 1.0) -> ShapeFn:
    """Star-shaped polygon with vertices at equal angular steps and the given radii.

    Regular polygons (all radii 1) and stars (alternating outer/inner radii) are both this one
    formula: along the ray at angle phi the boundary is the chord between the two neighbouring
    vertices, r(phi) = ra*rb*sin(D) / (ra*sin(t) + rb*sin(D - t)).
    """
    m = len(radii)
    step = TWO_PI / m
    r_tab = torch.tensor(radii, dtype=torch.float32) * scale

    def fn(u: Tensor, v: Tensor) -> Tensor:
        rho, phi = _polar(u, v)
        sector = torch.clamp((phi / step).long(), max=m - 1)
        t = phi - sector.to(phi.dtype) * step
        ra = r_tab[sector]
        rb = r_tab[(sector + 1) % m]
        bound = ra * rb * math.sin(step) / (ra * torch.sin(t) + rb * torch.sin(step - t))
        return rho <= bound

    return fn


def regular_polygon(n: int, scale: float = 1.0) -> ShapeFn:
    return radial_polygon([1.0] * n, scale)


def star(points: int, inner: float) -> ShapeFn:
    return radial_polygon([1.0, inner] * points)


def flower(petals: int, base: float = 0.3) -> ShapeFn:
    """Rounded petals: boundary radius follows |cos(k*phi/2)|, which has k maxima per turn."""

    def fn(u: Tensor, v: Tensor) -> Tensor:
        rho, phi = _polar(u, v)
        bound = base + (1.0 - base) * torch.abs(torch.cos(phi * (petals / 2.0)))
        return rho <= bound

    return fn


def disc(cx: float, cy: float, r: float) -> ShapeFn:
    def fn(u: Tensor, v: Tensor) -> Tensor:
        return (u - cx) ** 2 + (v - cy) ** 2 <= r * r

    return fn


def box(cx: float, cy: float, hw: float, hh: float, angle: float = 0.0) -> ShapeFn:
    """Axis-aligned (or rotated by ``angle`` about its own centre) rectangle."""
    c, s = math.cos(angle), math.sin(angle)

    def fn(u: Tensor, v: Tensor) -> Tensor:
        du, dv = u - cx, v - cy
        lu = du * c + dv * s
        lv = -du * s + dv * c
        return (lu.abs() <= hw) & (lv.abs() <= hh)

    return fn


def convex(vertices: list[tuple[float, float]]) -> ShapeFn:
    """Convex polygon given counter-clockwise: inside = on the left of every edge."""
    edges = list(zip(vertices, vertices[1:] + vertices[:1], strict=True))

    def fn(u: Tensor, v: Tensor) -> Tensor:
        out = torch.ones_like(u, dtype=torch.bool)
        for (x1, y1), (x2, y2) in edges:
            out &= (x2 - x1) * (v - y1) - (y2 - y1) * (u - x1) >= 0
        return out

    return fn


def union(*fns: ShapeFn) -> ShapeFn:
    def fn(u: Tensor, v: Tensor) -> Tensor:
        out = fns[0](u, v)
        for f in fns[1:]:
            out = out | f(u, v)
        return out

    return fn


def minus(a: ShapeFn, b: ShapeFn) -> ShapeFn:
    def fn(u: Tensor, v: Tensor) -> Tensor:
        return a(u, v) & ~b(u, v)

    return fn


def intersect(a: ShapeFn, b: ShapeFn) -> ShapeFn:
    def fn(u: Tensor, v: Tensor) -> Tensor:
        return a(u, v) & b(u, v)

    return fn


def arms(n: int, width: float, length: float = 1.0) -> ShapeFn:
    """n bars radiating from the centre (plus, tripod, asterisks)."""
    parts = []
    for i in range(n):
        a = math.pi / 2 + TWO_PI * i / n
        parts.append(
            box(0.5 * length * math.cos(a), 0.5 * length * math.sin(a), length / 2, width / 2, a)
        )
    return union(disc(0.0, 0.0, width * 0.75), *parts)


def annulus(r_in: float, r_out: float) -> ShapeFn:
    def fn(u: Tensor, v: Tensor) -> Tensor:
        d2 = u * u + v * v
        return (d2 <= r_out * r_out) & (d2 >= r_in * r_in)

    return fn


def polygon_frame(n: int, inner: float) -> ShapeFn:
    return minus(regular_polygon(n), regular_polygon(n, inner))


def square_frame(outer: float, inner: float) -> ShapeFn:
    return minus(box(0, 0, outer, outer), box(0, 0, inner, inner))


def chevrons(count: int, height: float = 0.85) -> ShapeFn:
    """``count`` parallel '>' bands; c = u + |v| is constant along each band's edges."""
    span = 2.0 - height  # range of c inside the unit box
    pitch = span / count
    width = pitch * 0.55

    def fn(u: Tensor, v: Tensor) -> Tensor:
        # apex of the first band at u = height - 1, tips of the last band near u = 1
        c = u + v.abs() + 1.0 - height
        k = torch.floor(c / pitch)
        frac = c - k * pitch
        return (v.abs() <= height) & (k >= 0) & (k < count) & (frac <= width)

    return fn


def arrow_shaft_head(
    shaft_hh: float, head_back: float, head_hh: float, tail: float = -1.0
) -> ShapeFn:
    shaft = box((tail + head_back) / 2, 0.0, (head_back - tail) / 2, shaft_hh)
    head = convex([(head_back, -head_hh), (1.0, 0.0), (head_back, head_hh)])
    return union(shaft, head)


def dots(centres: list[tuple[float, float]], r: float) -> ShapeFn:
    return union(*[disc(x, y, r) for x, y in centres])


def dot_ring(k: int, radius: float = 0.72) -> ShapeFn:
    r = min(0.28, 0.75 * radius * math.sin(math.pi / k))
    pts = [(radius * math.sin(TWO_PI * i / k), radius * math.cos(TWO_PI * i / k)) for i in range(k)]
    return dots(pts, r)


def bars(k: int) -> ShapeFn:
    """k parallel bars filling a square patch (bars and gaps of equal width)."""
    parts = 2 * k - 1

    def fn(u: Tensor, v: Tensor) -> Tensor:
        idx = torch.floor((u + 0.9) / (1.8 / parts))
        return (u.abs() <= 0.9) & (v.abs() <= 0.9) & (torch.remainder(idx, 2) == 0)

    return fn


def checker(n: int) -> ShapeFn:
    def fn(u: Tensor, v: Tensor) -> Tensor:
        iu = torch.floor((u + 0.9) * n / 1.8)
        iv = torch.floor((v + 0.9) * n / 1.8)
        return (u.abs() <= 0.9) & (v.abs() <= 0.9) & (torch.remainder(iu + iv, 2) == 0)

    return fn


def band(kind: str) -> ShapeFn:
    """A thick zigzag or wavy band across the patch."""

    def fn(u: Tensor, v: Tensor) -> Tensor:
        if kind == "zigzag":
            t = torch.remainder(u + 1.0, 1.0)
            centre = 0.5 * (1.0 - 4.0 * (t - 0.5).abs()) * 1.0
        else:
            centre = 0.5 * torch.sin(TWO_PI * u)
        return ((v - centre).abs() <= 0.22) & (u.abs() <= 1.0)

    return fn


def heart() -> ShapeFn:
    def fn(u: Tensor, v: Tensor) -> Tensor:
        x = u * 1.15
        y = v * 1.15 + 0.15
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0

    return fn


def ellipse(a: float, b: float) -> ShapeFn:
    def fn(u: Tensor, v: Tensor) -> Tensor:
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0

    return fn


def egg() -> ShapeFn:
    def fn(u: Tensor, v: Tensor) -> Tensor:
        return (u / (0.7 * (1.0 - 0.22 * v))) ** 2 + v * v <= 1.0

    return fn


def sector(
    start_deg: float, extent_deg: float, r: float, cx: float = 0.0, cy: float = 0.0
) -> ShapeFn:
    """Filled circular sector, angles in degrees counter-clockwise from +u."""
    s = math.radians(start_deg)
    e = math.radians(extent_deg)

    def fn(u: Tensor, v: Tensor) -> Tensor:
        du, dv = u - cx, v - cy
        ang = torch.remainder(torch.atan2(dv, du) - s, TWO_PI)
        return (du * du + dv * dv <= r * r) & (ang <= e)

    return fn
